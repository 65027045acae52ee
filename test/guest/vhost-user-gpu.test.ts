/**
 * A stock Linux guest's virtio_gpu drives paravirt's GPU device through QEMU's vhost-user-gpu-pci:
 * the rings go to `paravirt serve gpu`, and the device sends what its scanout shows back to QEMU
 * over the vhost-user-gpu display socket (GPU_SET_SOCKET; SCANOUT, UPDATE). What the guest writes
 * to /dev/fb0 is what QMP screendump shows, pixel for pixel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodePng } from '../../src/devices/display/framebuffer.ts';
import { patternMismatch, until, writePattern } from '../lab/fbdev.ts';
import { startGuest } from '../lab/guest.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const WIDTH = 640;
const HEIGHT = 480;
const PATTERN_TOP = 240;
const PATTERN_ROWS = 48;

test('vhost-user-gpu: the guest draws through `paravirt serve gpu` and QMP screendump shows it exactly', async (t) => {
  if (!requireLab(t)) return;
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vu-gpu-'));
  const socketPath = join(dir, 'gpu.sock');
  const backend = new PeerProcess(
    'paravirt serve gpu',
    [process.execPath, PARAVIRT, 'serve', 'gpu', '--socket-path', socketPath, '--width', String(WIDTH), '--height', String(HEIGHT)],
    { textStdout: true },
  );
  t.after(async () => {
    await backend.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');

  // queue_reset=off: vhost-user-gpu-pci offers the guest VIRTIO_F_RING_RESET whatever the back-end
  // offers, then passes it to SET_FEATURES, which a back-end must refuse for a bit it never offered.
  const guest = await startGuest(t, {
    name: 'vu-gpu',
    devices: ['-chardev', `socket,id=vugpu,path=${qemu.toQemuPath(socketPath)}`, '-device', `vhost-user-gpu-pci,chardev=vugpu,xres=${WIDTH},yres=${HEIGHT},queue_reset=off`],
  });
  await until('virtio_gpu binding and fbdev registering /dev/fb0', async () => (await guest.run('test -e /dev/fb0')).code === 0);
  assert.equal((await guest.check('cat /sys/class/graphics/fb0/virtual_size')).trim(), `${WIDTH},${HEIGHT}`);

  const screendump = async (): Promise<{ width: number; height: number; pixels: Uint8Array }> => {
    const file = join(guest.dir, 'screen.png');
    await guest.qmp('screendump', { filename: guest.qemuPath(file), format: 'png' });
    return decodePng(readFileSync(file));
  };
  // Console text on the framebuffer's VT reaches QEMU's display.
  await guest.check('printf "paravirt vhost-user-gpu console\\n\\n" > /dev/tty1');
  await until('console text in the screendump', async () => {
    const png = await screendump();
    return png.width === WIDTH && png.height === HEIGHT && png.pixels.some((b, i) => i % 4 !== 3 && b !== 0);
  });

  await writePattern(guest, WIDTH, PATTERN_TOP, PATTERN_ROWS);
  let mismatch = '';
  await until(
    'the pattern in the screendump',
    async () => (mismatch = patternMismatch(await screendump(), WIDTH, PATTERN_TOP, PATTERN_ROWS)) === '',
    () => mismatch,
  );

  const exit = await backend.stop();
  assert.equal(exit.code, 0, 'the back-end exits cleanly on SIGTERM');
});
