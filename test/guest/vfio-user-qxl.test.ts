/**
 * A stock Linux guest binds its own qxl drm driver to the QXL card served by `paravirt serve qxl`
 * through QEMU's vfio-user-pci: /dev/fb0 has the mode paravirt offered, console text makes the
 * screen non-blank, and a pattern written into /dev/fb0 (through qxl's COPY drawables into the
 * primary surface) is what paravirt's PNG shows, pixel for pixel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { decodePng } from '../../src/devices/display/framebuffer.ts';
import { controlRequest } from '../../src/devices/qxl/control.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { shareDir, startGuest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
/**
 * A small screen: QEMU 11.1's vfio-user-pci has no x-intx-mmap-timeout-ms, so after the first
 * INTx it stops mapping the BARs and every guest access to them becomes a vfio-user message
 * (vfio's INTx EOI detection); TTM clearing buffers and qxl copying damage then cost a message
 * per access, and a 640x480 screen takes minutes under TCG.
 */
const WIDTH = 128;
const HEIGHT = 96;
/** Guest commands that touch the BARs through messages: loading qxl, writing the pattern. */
const SLOW_MS = 240_000;
/** How long the guest's deferred framebuffer I/O and qxl's dirty worker may take to reach the device under TCG. */
const SCREEN_DEADLINE_MS = 60_000;

/** A known picture: x8r8g8b8 bytes as the guest writes them to /dev/fb0. */
function pattern(): Buffer {
  const out = Buffer.alloc(WIDTH * HEIGHT * 4);
  for (let y = 0; y < HEIGHT; y++) {
    for (let x = 0; x < WIDTH; x++) {
      const o = (y * WIDTH + x) * 4;
      out[o] = (x * 7 + y * 3) & 0xff; // blue
      out[o + 1] = (x ^ y) & 0xff; // green
      out[o + 2] = ((x >> 2) * (y >> 2)) & 0xff; // red
      out[o + 3] = 0;
    }
  }
  return out;
}

async function screen(control: string): Promise<{ width: number; height: number; pixels: Uint8Array } | undefined> {
  const reply = await controlRequest(control, { op: 'png' });
  return reply.ok && reply.png !== undefined ? decodePng(Buffer.from(reply.png, 'base64')) : undefined;
}

/** Ask for the screen until `done` says it shows what it should, or the deadline passes; the last look is returned. */
async function screenUntil(control: string, done: (s: { pixels: Uint8Array }) => boolean): Promise<{ width: number; height: number; pixels: Uint8Array } | undefined> {
  const deadline = Date.now() + SCREEN_DEADLINE_MS;
  let last = await screen(control);
  while ((last === undefined || !done(last)) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    last = await screen(control);
  }
  return last;
}

test('vfio-user qxl: Linux qxl binds, /dev/fb0 has the offered mode, console text and a written pattern reach paravirt\'s PNG pixel-exact, a new monitor size reaches the guest', async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'vfu-qxl');
  const socketPath = join(share.dir, 'qxl.sock');
  const control = join(share.dir, 'qxl.ctl');
  const image = join(share.dir, 'pattern.img');
  const expected = pattern();
  writeFileSync(image, expected);

  const server = new PeerProcess(
    'paravirt serve qxl',
    [process.execPath, PARAVIRT, 'serve', 'qxl', '--transport', 'vfio-user', '--socket-path', socketPath, '--control', control, '--width', String(WIDTH), '--height', String(HEIGHT)],
    { textStdout: true },
  );
  t.after(() => server.stop());
  await server.waitForOutput(/vfio-user server listening/, 0, 'starting to listen');

  const device = JSON.stringify({ driver: 'vfio-user-pci', socket: { path: share.qemuPath(socketPath), type: 'unix' } });
  const guest = await startGuest(t, {
    name: 'vfu-qxl',
    devices: ['-device', device, '-blockdev', `driver=file,node-name=pattern,filename=${share.qemuPath(image)},read-only=on`, '-device', 'virtio-blk-pci,drive=pattern'],
  });

  const fn = (await guest.check('grep -l 0x1b36 /sys/bus/pci/devices/*/vendor | head -1 | xargs dirname')).trim();
  assert.match(fn, /\/sys\/bus\/pci\/devices\//, 'a PCI function of vendor 0x1b36 exists');
  assert.equal((await guest.check(`cat ${fn}/device`)).trim(), '0x0100');
  await guest.check('modprobe qxl', { timeoutMs: SLOW_MS });
  assert.equal((await guest.check(`basename $(readlink ${fn}/driver)`)).trim(), 'qxl', 'the stock qxl driver is bound');
  await guest.check('for i in $(seq 200); do [ -e /dev/fb0 ] && exit 0; sleep 0.1; done; exit 1');
  assert.equal((await guest.check('cat /sys/class/graphics/fb0/virtual_size')).trim(), `${WIDTH},${HEIGHT}`, 'the mode paravirt offered');
  assert.equal((await guest.check('cat /sys/class/graphics/fb0/bits_per_pixel')).trim(), '32');
  assert.match(await guest.check('cat /sys/class/graphics/fb0/name'), /qxl/);

  // Console text on the framebuffer console makes the screen non-blank.
  await guest.check("printf 'paravirt QXL\\n' > /dev/tty0", { timeoutMs: SLOW_MS });
  const lit = (s: { pixels: Uint8Array }): boolean => s.pixels.some((v, i) => i % 4 !== 3 && v !== 0);
  const consoleScreen = await screenUntil(control, lit);
  assert.ok(consoleScreen !== undefined && lit(consoleScreen), 'console text shows on the primary surface');
  assert.equal(consoleScreen.width, WIDTH);
  assert.equal(consoleScreen.height, HEIGHT);

  // The console steps aside (no blinking cursor over the picture), then the pattern goes in.
  await guest.check('echo 0 > /sys/class/graphics/fbcon/cursor_blink; for v in /sys/class/vtconsole/vtcon*; do grep -q "frame buffer" $v/name && echo 0 > $v/bind; done; true', { timeoutMs: SLOW_MS });
  await guest.check(`dd if=/dev/vda of=/dev/fb0 bs=${WIDTH * 4} count=${HEIGHT} 2>/dev/null`, { timeoutMs: SLOW_MS });
  const mismatches = (s: { pixels: Uint8Array }): number => {
    let n = 0;
    for (let p = 0; p < WIDTH * HEIGHT; p++) {
      const o = p * 4;
      if (s.pixels[o] !== expected[o + 2] || s.pixels[o + 1] !== expected[o + 1] || s.pixels[o + 2] !== expected[o]) n++;
    }
    return n;
  };
  const shown = await screenUntil(control, (s) => mismatches(s) === 0);
  assert.ok(shown !== undefined);
  assert.equal(mismatches(shown), 0, 'every pixel of the pattern, as paravirt shows the primary surface');

  // The same picture through the command line.
  const file = join(share.dir, 'screen.png');
  await promisify(execFile)(process.execPath, [PARAVIRT, 'qxl', '--control', control, 'png', file]);
  assert.equal(mismatches(decodePng(readFileSync(file))), 0, '`paravirt qxl png` writes the same picture');
  // A new monitor size reaches the guest: its connector now prefers it.
  const resized = await controlRequest(control, { op: 'resize', width: 160, height: 120 });
  assert.ok(resized.ok, 'the control socket takes the new size');
  const preferred = await guest.check(
    'c=$(ls -d /sys/class/drm/card*-Virtual-1 | head -1); for i in $(seq 300); do echo detect > $c/status; m=$(head -1 $c/modes); [ "$m" = 160x120 ] && break; sleep 0.2; done; echo "$m"',
    { timeoutMs: SLOW_MS },
  );
  assert.equal(preferred.trim(), '160x120', 'the guest offers the new monitor size as its preferred mode');

  const status = await controlRequest(control, { op: 'status' });
  assert.ok(status.ok && status.status !== undefined);
  assert.equal(status.status.guestBug, null);
  t.diagnostic(`qxl counters: ${JSON.stringify(status.status.counters)}; ports written: ${JSON.stringify(status.status.ports)}; heads ${JSON.stringify(status.status.heads)}`);
});
