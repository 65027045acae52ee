/**
 * A stock Linux guest's virtio_gpu drives a virtio-gpu PCI function served by `paravirt serve gpu
 * --transport vfio-user` through QEMU's vfio-user-pci: the drm driver binds, fbdev gives /dev/fb0
 * in the configured mode, what the guest writes to /dev/fb0 is what `paravirt gpu --control PATH
 * screenshot` shows, pixel for pixel, and a display change from the host reaches the guest.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { decodePng } from '../../src/devices/display/framebuffer.ts';
import { gpuControlRequest } from '../../src/devices/gpu/control.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { type Guest, startGuest } from '../lab/guest.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const WIDTH = 640;
const HEIGHT = 480;
/** Rows of the pattern, written from PATTERN_TOP down: below the console's first lines. */
const PATTERN_TOP = 200;
const PATTERN_ROWS = 48;
/** How long the guest's deferred framebuffer I/O and display work may take under TCG. */
const SETTLE_MS = 30_000;

const run = promisify(execFile);

/** A pattern no two neighbouring pixels share. */
function pattern(x: number, y: number): [number, number, number] {
  return [(x * 5 + y * 3) & 0xff, (x + y * 11) & 0xff, (x * y) & 0xff];
}

/** The screenshot PNG of scanout 0, decoded. */
async function screenshot(control: string): Promise<{ width: number; height: number; pixels: Uint8Array }> {
  const reply = await gpuControlRequest(control, { op: 'screenshot' });
  if (!reply.ok || reply.png === undefined) throw new Error(`screenshot failed: ${JSON.stringify(reply)}`);
  return decodePng(Buffer.from(reply.png, 'base64'));
}

/** Polls `probe` until it returns true; the deadline fails the test with `what`. */
async function until(what: string, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + SETTLE_MS;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${SETTLE_MS} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function connectorModes(guest: Guest): Promise<string[]> {
  return (await guest.check('cat /sys/class/drm/card*-Virtual-1/modes')).trim().split('\n');
}

test('vfio-user gpu: virtio_gpu binds, /dev/fb0 has the mode, its pixels reach the PNG exactly, a display change reaches the guest', async (t) => {
  if (!requireLab(t)) return;
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vfu-gpu-'));
  const socketPath = join(dir, 'gpu.sock');
  const control = join(dir, 'control.sock');
  const server = new PeerProcess(
    'paravirt serve gpu --transport vfio-user',
    [process.execPath, PARAVIRT, 'serve', 'gpu', '--transport', 'vfio-user', '--socket-path', socketPath, '--width', String(WIDTH), '--height', String(HEIGHT), '--control', control],
    { textStdout: true },
  );
  t.after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await server.waitForOutput(/vfio-user server listening/, 0, 'starting to listen');

  const device = JSON.stringify({ driver: 'vfio-user-pci', socket: { path: qemu.toQemuPath(socketPath), type: 'unix' } });
  const guest = await startGuest(t, { name: 'vfu-gpu', devices: ['-device', device] });

  // PCI device 0x1040 + 16 (GPU), bound by virtio_pci; the drm driver on top is virtio_gpu.
  const fn = (await guest.check('grep -l 0x1050 /sys/bus/pci/devices/*/device | head -1 | xargs dirname')).trim();
  assert.match(fn, /\/sys\/bus\/pci\/devices\//, 'a PCI function with device id 0x1050 exists');
  assert.equal((await guest.check(`basename $(readlink ${fn}/driver)`)).trim(), 'virtio-pci');
  await until('virtio_gpu binding and fbdev registering /dev/fb0', async () => (await guest.run('test -e /dev/fb0 && cat /sys/class/graphics/fb0/name')).code === 0);
  assert.match(await guest.check('cat /sys/class/drm/card*/device/driver/module/drivers/* 2>/dev/null; ls /sys/bus/virtio/drivers/virtio_gpu'), /virtio/);
  assert.equal((await guest.check('cat /sys/class/graphics/fb0/virtual_size')).trim(), `${WIDTH},${HEIGHT}`);
  assert.equal((await connectorModes(guest))[0], `${WIDTH}x${HEIGHT}`, 'the EDID mode is the preferred one');

  // Console text on the framebuffer's VT makes the screen non-blank.
  await guest.check('printf "paravirt virtio-gpu console\\n\\n" > /dev/tty1');
  await until('console text on the scanout', async () => {
    const png = await screenshot(control);
    return png.width === WIDTH && png.pixels.some((b, i) => i % 4 !== 3 && b !== 0);
  });

  // Stop the console drawing (fbcon) so that only the pattern writes the framebuffer, then write
  // the pattern rows through /dev/fb0 in its own format (XRGB8888: bytes B, G, R, X).
  await guest.check('for v in /sys/class/vtconsole/vtcon*; do grep -q "frame buffer" $v/name && echo 0 > $v/bind; done; true');
  const stride = Number((await guest.check('cat /sys/class/graphics/fb0/stride')).trim());
  assert.ok(stride >= WIDTH * 4, `stride ${stride}`);
  const rows = Buffer.alloc(stride * PATTERN_ROWS);
  for (let y = 0; y < PATTERN_ROWS; y++) {
    for (let x = 0; x < WIDTH; x++) {
      const [r, g, b] = pattern(x, PATTERN_TOP + y);
      rows.set([b, g, r, 0], y * stride + x * 4);
    }
  }
  await guest.check(`printf '%s' '${rows.toString('base64')}' | base64 -d > /tmp/pattern && dd if=/tmp/pattern of=/dev/fb0 bs=${stride} seek=${PATTERN_TOP} conv=notrunc 2>/dev/null`);
  let mismatch = '';
  await until('the pattern in the screenshot', async () => {
    const png = await screenshot(control);
    mismatch = '';
    for (let y = PATTERN_TOP; y < PATTERN_TOP + PATTERN_ROWS && mismatch === ''; y++) {
      for (let x = 0; x < WIDTH; x++) {
        const o = (y * png.width + x) * 4;
        const want = [...pattern(x, y), 255];
        const got = [...png.pixels.subarray(o, o + 4)];
        if (got.join() !== want.join()) {
          mismatch = `pixel (${x}, ${y}) is ${got.join()}, not ${want.join()}`;
          break;
        }
      }
    }
    return mismatch === '';
  }).catch((err: unknown) => assert.fail(`${(err as Error).message}: ${mismatch}`));

  // The same picture through the command line, as a PNG file.
  const file = join(dir, 'screen.png');
  await run(process.execPath, [PARAVIRT, 'gpu', '--control', control, 'screenshot', file]);
  const saved = decodePng(readFileSync(file));
  assert.deepEqual([saved.width, saved.height], [WIDTH, HEIGHT]);
  const o = ((PATTERN_TOP + 7) * WIDTH + 300) * 4;
  assert.deepEqual([...saved.pixels.subarray(o, o + 4)], [...pattern(300, PATTERN_TOP + 7), 255]);

  // A display change: the guest is told (events_read, configuration interrupt), reads the
  // displays and EDID again, and its connector offers the new mode.
  await run(process.execPath, [PARAVIRT, 'gpu', '--control', control, 'mode', '800x600']);
  await until('the guest connector offering 800x600', async () => (await connectorModes(guest))[0] === '800x600');
});
