/**
 * paravirt's virtio-gpu driver against QEMU's own virtio-gpu-pci, over virtio-pci on a qtest
 * machine: the display and EDID QEMU reports, and a pattern the driver draws (resource, backing
 * from guest memory as a scatter list, scanout, transfer, flush) is what QMP screendump shows,
 * pixel for pixel; a partial update changes only its rectangle.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { decodePng } from '../../src/devices/display/framebuffer.ts';
import { GpuDriver, type Surface } from '../../src/devices/gpu/driver.ts';
import { GpuFeature } from '../../src/devices/gpu/wire.ts';
import { hasFeature } from '../../src/virtio/constants.ts';
import { shareDir } from '../lab/guest.ts';
import { QmpClient } from '../lab/qmp.ts';
import { startQtest } from '../lab/qtest.ts';
import { virtioPciTransport } from '../lab/qtest-pci.ts';
import { requireLab } from '../lab/require.ts';

const WIDTH = 320;
const HEIGHT = 200;

function pattern(x: number, y: number): [number, number, number] {
  return [(x * 7 + y) & 0xff, (y * 13 + x * 3) & 0xff, (x ^ y) & 0xff];
}

/** The pattern in B8G8R8X8, the format Linux's XRGB8888 framebuffers use. */
function paint(s: Surface, colour: (x: number, y: number) => [number, number, number]): void {
  for (let y = 0; y < s.height; y++) {
    for (let x = 0; x < s.width; x++) {
      const [r, g, b] = colour(x, y);
      s.pixels.set([b, g, r, 0], (y * s.width + x) * 4);
    }
  }
}

test("paravirt's gpu driver draws on QEMU's virtio-gpu-pci: what it draws is what QMP screendump shows", async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'qtest-gpu');
  const qmpPath = join(share.dir, 'qmp.sock');
  const m = await startQtest({
    devices: [
      '-device', `virtio-gpu-pci,disable-legacy=on,addr=04.0,xres=${WIDTH},yres=${HEIGHT},edid=on`,
      '-qmp', `unix:${share.qemuPath(qmpPath)},server=on,wait=off`,
    ],
    sharedRam: true,
  }, t);
  const socket = connect(qmpPath);
  await once(socket, 'connect');
  t.after(() => socket.destroy());
  const qmp = new QmpClient(socket);
  await qmp.negotiate();

  const transport = await virtioPciTransport(m, 4);
  const gpu = await GpuDriver.open(transport, { backingEntryBytes: 4096 });
  assert.ok(hasFeature(gpu.core.features, GpuFeature.EDID), 'QEMU offers EDID');
  const [display] = await gpu.displayInfo();
  assert.deepEqual(display, { rect: { x: 0, y: 0, width: WIDTH, height: HEIGHT }, enabled: true });
  const edid = await gpu.edid(0);
  assert.deepEqual([...edid.subarray(0, 8)], [0, 255, 255, 255, 255, 255, 255, 0], 'an EDID header');
  assert.equal(edid.subarray(0, 128).reduce((s, b) => s + b, 0) % 256, 0, 'the base block checksum');

  const screen = await gpu.createSurface(WIDTH, HEIGHT);
  paint(screen, pattern);
  await gpu.setScanout(0, screen);
  await gpu.update(screen);

  const dump = async (): Promise<{ width: number; height: number; pixels: Uint8Array }> => {
    const file = join(share.dir, 'screen.png');
    await qmp.execute('screendump', { filename: share.qemuPath(file), format: 'png' });
    return decodePng(readFileSync(file));
  };
  const expectScreen = (png: { width: number; height: number; pixels: Uint8Array }, colour: (x: number, y: number) => [number, number, number]): void => {
    assert.deepEqual([png.width, png.height], [WIDTH, HEIGHT]);
    for (let y = 0; y < HEIGHT; y++) {
      for (let x = 0; x < WIDTH; x++) {
        const o = (y * WIDTH + x) * 4;
        const got = [...png.pixels.subarray(o, o + 3)];
        if (got.join() !== colour(x, y).join()) assert.fail(`pixel (${x}, ${y}) is ${got.join()}, drawn ${colour(x, y).join()}`);
      }
    }
  };
  expectScreen(await dump(), pattern);

  // A partial update: a white rectangle, transferred and flushed alone.
  const box = { x: 40, y: 30, width: 50, height: 20 };
  const inBox = (x: number, y: number): boolean => x >= box.x && x < box.x + box.width && y >= box.y && y < box.y + box.height;
  const boxed = (x: number, y: number): [number, number, number] => (inBox(x, y) ? [255, 255, 255] : pattern(x, y));
  paint(screen, boxed);
  await gpu.update(screen, box);
  expectScreen(await dump(), boxed);

  // The cursor commands are accepted on QEMU's cursor queue.
  const cursor = await gpu.createSurface(64, 64);
  await gpu.update(cursor);
  await gpu.updateCursor(cursor, 0, 10, 10);
  await gpu.moveCursor(0, 20, 20);
  await gpu.close();
  t.diagnostic(`QEMU ${m.qemu.version} (${m.accelerator}); ${WIDTH}x${HEIGHT} pattern and partial update identical in screendump`);
});
