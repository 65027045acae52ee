/**
 * A stock Linux guest's virtio_gpu drives a virtio-gpu PCI function served by `paravirt serve gpu
 * --transport vfio-user` through QEMU's vfio-user-pci: the drm driver binds, fbdev gives /dev/fb0
 * in the configured mode, what the guest writes to /dev/fb0 is what `paravirt gpu --control PATH
 * screenshot` shows, pixel for pixel, and a display change from the host reaches the guest.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { decodePng } from '../../src/devices/display/framebuffer.ts';
import { gpuControlRequest } from '../../src/devices/gpu/control.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { type Guest, startGuest } from '../lab/guest.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { pattern, patternMismatch, until, writePattern } from '../lab/fbdev.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const WIDTH = 640;
const HEIGHT = 480;
/** Rows of the pattern, written from PATTERN_TOP down: below the console's first lines. */
const PATTERN_TOP = 200;
const PATTERN_ROWS = 48;

const run = promisify(execFile);

/** The screenshot PNG of scanout 0, decoded. */
async function screenshot(control: string): Promise<{ width: number; height: number; pixels: Uint8Array }> {
  const reply = await gpuControlRequest(control, { op: 'screenshot' });
  if (!reply.ok || reply.png === undefined) throw new Error(`screenshot failed: ${JSON.stringify(reply)}`);
  return decodePng(Buffer.from(reply.png, 'base64'));
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

  // Only the pattern writes the framebuffer now; it reaches the PNG exactly (alpha is opaque).
  await writePattern(guest, WIDTH, PATTERN_TOP, PATTERN_ROWS);
  let mismatch = '';
  await until(
    'the pattern in the screenshot',
    async () => (mismatch = patternMismatch(await screenshot(control), WIDTH, PATTERN_TOP, PATTERN_ROWS)) === '',
    () => mismatch,
  );

  // The same picture through the command line, as a PNG file.
  const file = join(dir, 'screen.png');
  await run(process.execPath, [PARAVIRT, 'gpu', '--control', control, 'screenshot', file]);
  const saved = decodePng(readFileSync(file));
  // The README's picture is this file: PARAVIRT_GPU_SCREENSHOT=path keeps a copy.
  if (process.env.PARAVIRT_GPU_SCREENSHOT) copyFileSync(file, process.env.PARAVIRT_GPU_SCREENSHOT);
  assert.deepEqual([saved.width, saved.height], [WIDTH, HEIGHT]);
  const o = ((PATTERN_TOP + 7) * WIDTH + 300) * 4;
  assert.deepEqual([...saved.pixels.subarray(o, o + 4)], [...pattern(300, PATTERN_TOP + 7), 255]);

  // A display change: the guest is told (events_read, configuration interrupt), reads the
  // displays and EDID again, and its connector offers the new mode.
  const configInterrupts = async (): Promise<number> => Number(/^\s*\d+:\s+(\d+).*virtio\d+-config$/m.exec(await guest.check('cat /proc/interrupts'))?.[1] ?? Number.NaN);
  const before = await configInterrupts();
  await run(process.execPath, [PARAVIRT, 'gpu', '--control', control, 'mode', '800x600']);
  await until('a configuration change interrupt in the guest', async () => (await configInterrupts()) > before);
  // The driver re-read the displays and EDID on that interrupt; a probe of the connector (which
  // reads only what the driver cached) now offers the new mode first.
  await until('the guest connector offering 800x600', async () => {
    await guest.check('for s in /sys/class/drm/card*-Virtual-1/status; do echo detect > $s; done');
    return (await connectorModes(guest))[0] === '800x600';
  });
});
