import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QxlDevice } from '../../../src/devices/qxl/device.ts';
import { QxlDriver } from '../../../src/devices/qxl/driver.ts';
import { BarAllocator } from '../../../src/transports/pci/bars.ts';
import { Q35_BAR_WINDOWS } from '../../../src/transports/pci/q35.ts';
import { FUNCTION_TARGET, FunctionBus, INTX_LINE } from './function-bus.ts';

test("paravirt's QXL driver on paravirt's QXL device: discovery, memslots, primary, FILL, chunked clipped COPY, cursor, every command released", async (t) => {
  const device = new QxlDevice({ ramSize: 4 << 20, vramSize: 4 << 20, width: 160, height: 120 });
  t.after(() => device.close());
  const bus = new FunctionBus(device.pci);
  device.attachInterrupts({ msix: () => {}, intx: (level) => bus.intx(level) });
  const bars = await new BarAllocator(Q35_BAR_WINDOWS).assign(bus, FUNCTION_TARGET);
  const qxl = await QxlDriver.open(bus, bus, FUNCTION_TARGET, bars, { intxLine: () => INTX_LINE, timeoutMs: 2000 });
  assert.deepEqual(qxl.rom.modes[0], { width: 160, height: 120 }, 'the configured mode first');

  await qxl.createPrimary(160, 120);
  await qxl.fill({ top: 0, left: 0, bottom: 120, right: 160 }, 0x00_10_20_30);
  const picture = new Uint8Array(8 * 6 * 4).map((_, i) => (i * 11) & 0xff);
  await qxl.copy(40, 30, 8, 6, picture, { clips: [{ top: 30, left: 40, bottom: 33, right: 48 }], chunkBytes: 2 * 8 * 4 });
  await qxl.cursorSet(3, 4, 4, 4, new Uint8Array(64).fill(0x80));
  await qxl.cursorMove(9, 10);

  const fb = device.framebuffer()!;
  assert.deepEqual(fb.pixel(0, 0), [0x10, 0x20, 0x30, 0xff]);
  for (const [x, y] of [
    [40, 30],
    [47, 32],
  ]) {
    const o = ((y - 30) * 8 + (x - 40)) * 4;
    assert.deepEqual(fb.pixel(x, y), [picture[o + 2], picture[o + 1], picture[o], 0xff], `picture pixel (${x}, ${y})`);
  }
  assert.deepEqual(fb.pixel(40, 33), [0x10, 0x20, 0x30, 0xff], 'below the clip rectangle');
  assert.deepEqual(device.status().cursor, { visible: true, x: 9, y: 10, width: 4, height: 4 });

  await qxl.collectReleases();
  assert.equal(qxl.outstanding, 0, 'paravirt releases each command once run');
  assert.equal(qxl.errors, 0);
  assert.equal(device.status().guestBug, null);
  await qxl.close();
});
