import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { decodePng } from '../../../src/devices/display/framebuffer.ts';
import { GpuDevice, type GpuDeviceOptions } from '../../../src/devices/gpu/device.ts';
import { GpuCommandError, GpuDriver, type Surface } from '../../../src/devices/gpu/driver.ts';
import { GPU_TYPE_NAMES, GpuCmd, GpuFormat, GpuResp, PIXEL_LAYOUTS } from '../../../src/devices/gpu/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceStatus } from '../../../src/virtio/constants.ts';

const MEMORY = 16 << 20;

async function open(options: GpuDeviceOptions = {}): Promise<{ device: GpuDevice; gpu: GpuDriver; memoryBytes: number }> {
  const device = new GpuDevice(options);
  const { transport } = createLoopback(device, { memoryBytes: MEMORY });
  const gpu = await GpuDriver.open(transport, { backingEntryBytes: 12288 });
  return { device, gpu, memoryBytes: MEMORY };
}

/** A pattern no two neighbouring pixels share: (x, y) → distinct red, green and blue. */
function pattern(x: number, y: number): [number, number, number] {
  return [(x * 7 + y) & 0xff, (y * 13 + x * 3) & 0xff, (x ^ y) & 0xff];
}

/** Writes the pattern into a B8G8R8X8 surface's backing, as Linux's XRGB8888 framebuffer holds it. */
function paint(s: Surface): void {
  for (let y = 0; y < s.height; y++) {
    for (let x = 0; x < s.width; x++) {
      const [r, g, b] = pattern(x, y);
      s.pixels.set([b, g, r, 0x55], (y * s.width + x) * 4);
    }
  }
}

async function rejectsWith(p: Promise<unknown>, response: number): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof GpuCommandError, String(err));
    assert.equal(GPU_TYPE_NAMES[err.response], GPU_TYPE_NAMES[response]);
    return true;
  });
}

test('gpu: a pattern the driver draws is what the scanout PNG shows, pixel for pixel', async () => {
  const { device, gpu } = await open({ scanouts: [{ width: 320, height: 200 }] });
  const [display] = await gpu.displayInfo();
  assert.deepEqual(display, { rect: { x: 0, y: 0, width: 320, height: 200 }, enabled: true });
  const s = await gpu.createSurface(320, 200);
  paint(s);
  await gpu.setScanout(0, s);
  await gpu.update(s);
  const png = decodePng(device.screenshot(0));
  assert.equal(png.width, 320);
  assert.equal(png.height, 200);
  for (let y = 0; y < 200; y++) {
    for (let x = 0; x < 320; x++) {
      const o = (y * 320 + x) * 4;
      assert.deepEqual([...png.pixels.subarray(o, o + 4)], [...pattern(x, y), 255], `pixel (${x}, ${y})`);
    }
  }
  // A partial update changes that rectangle only, and reports it dirty.
  device.framebuffer(0).takeDirty();
  s.pixels.fill(0xff);
  await gpu.update(s, { x: 10, y: 20, width: 5, height: 3 });
  assert.deepEqual(device.framebuffer(0).takeDirty(), [{ x: 10, y: 20, width: 5, height: 3 }]);
  assert.deepEqual(device.framebuffer(0).pixel(12, 21), [255, 255, 255, 255]);
  assert.deepEqual(device.framebuffer(0).pixel(15, 21), [...pattern(15, 21), 255]);
  assert.equal(device.counters.snapshot().queues[0]!.errors, 0);
  await gpu.close();
});

test('gpu: every pixel format Linux uses shows its colours in the right channels', async () => {
  const { device, gpu } = await open({ scanouts: [{ width: 16, height: 16 }] });
  for (const [format, layout] of Object.entries(PIXEL_LAYOUTS)) {
    const s = await gpu.createSurface(16, 16, Number(format));
    for (let i = 0; i < 256; i++) {
      const px = new Uint8Array(4);
      px[layout.r] = 0x11;
      px[layout.g] = 0x22;
      px[layout.b] = 0x33;
      if (layout.a >= 0) px[layout.a] = 0x44;
      s.pixels.set(px, i * 4);
    }
    await gpu.setScanout(0, s);
    await gpu.update(s);
    assert.deepEqual(device.framebuffer(0).pixel(5, 5), [0x11, 0x22, 0x33, 0xff], `format ${format}`);
    await gpu.destroySurface(s);
  }
  await gpu.close();
});

test('gpu: a scanout follows the size the driver sets, and goes black when its resource is dropped', async () => {
  const { device, gpu } = await open({ scanouts: [{ width: 64, height: 64 }] });
  const seen: number[] = [];
  device.on('framebuffer', (_i, fb) => seen.push(fb.width));
  const s = await gpu.createSurface(100, 40);
  s.pixels.fill(0x80);
  await gpu.setScanout(0, s, { x: 10, y: 0, width: 50, height: 40 });
  assert.deepEqual(seen, [50]);
  await gpu.update(s);
  assert.deepEqual(device.framebuffer(0).pixel(49, 39), [0x80, 0x80, 0x80, 255]);
  await gpu.destroySurface(s);
  assert.deepEqual(device.framebuffer(0).pixel(49, 39), [0, 0, 0, 255]);
  await gpu.close();
});

test('gpu: GET_EDID describes the configured mode in a valid EDID block', async () => {
  const { gpu } = await open({ scanouts: [{ width: 1280, height: 800 }, { width: 640, height: 480 }] });
  assert.ok(gpu.hasEdid);
  const edid = await gpu.edid(1);
  assert.equal(edid.length, 128);
  assert.deepEqual([...edid.subarray(0, 8)], [0, 255, 255, 255, 255, 255, 255, 0]);
  assert.equal(edid.reduce((s, b) => s + b, 0) % 256, 0, 'checksum');
  const hActive = edid[56]! | ((edid[58]! >> 4) << 8);
  const vActive = edid[59]! | ((edid[61]! >> 4) << 8);
  assert.deepEqual([hActive, vActive], [640, 480]);
  await rejectsWith(gpu.edid(2), GpuResp.ERR_INVALID_SCANOUT_ID);
  await gpu.close();
});

test('gpu: a display change reaches the driver, which reads the new mode and clears the event', async () => {
  const { device, gpu } = await open({ scanouts: [{ width: 800, height: 600 }] });
  const changed = new Promise<unknown>((resolve) => gpu.onDisplayChange(resolve));
  device.setMode(0, { width: 1024, height: 768 });
  assert.deepEqual(await changed, [{ rect: { x: 0, y: 0, width: 1024, height: 768 }, enabled: true }]);
  assert.equal(new DataView(device.config.buffer).getUint32(0, true), 0, 'events_read cleared');
  assert.throws(() => device.setMode(0, { width: 8, height: 8 }), /display mode 8x8/);
  assert.throws(() => device.setMode(3, { width: 800, height: 600 }), /scanout 3 does not exist/);
  await gpu.close();
});

test('gpu: the cursor takes its image from a resource and moves', async () => {
  const { device, gpu } = await open();
  const c = await gpu.createSurface(64, 64, GpuFormat.B8G8R8A8_UNORM);
  c.pixels.fill(0);
  c.pixels.set([0x30, 0x20, 0x10, 0x80], 0);
  await gpu.update(c);
  const updated = once(device, 'cursor');
  await gpu.updateCursor(c, 0, 100, 50, 1, 2);
  await updated;
  assert.deepEqual({ ...device.cursor, image: undefined }, { scanout: 0, x: 100, y: 50, hotX: 1, hotY: 2, image: undefined });
  assert.deepEqual(device.cursor.image?.pixel(0, 0), [0x10, 0x20, 0x30, 0x80]);
  await gpu.moveCursor(0, 7, 8);
  assert.deepEqual([device.cursor.x, device.cursor.y], [7, 8]);
  assert.ok(device.cursor.image);
  await gpu.updateCursor(undefined, 0, 0, 0);
  assert.equal(device.cursor.image, undefined);
  await gpu.close();
});

test('gpu: many tiny resources reach the memory bound too, not the host heap', async () => {
  const { device, gpu } = await open({ maxResourceMemory: 64 << 10 });
  const u32 = (...v: number[]): Uint8Array => new Uint8Array(new Uint32Array(v).buffer);
  let created = 0;
  for (let id = 1; id <= 1000; id++) {
    try {
      await gpu.command(GpuCmd.RESOURCE_CREATE_2D, u32(id, 2, 1, 1));
    } catch (err) {
      assert.ok(err instanceof GpuCommandError && err.response === GpuResp.ERR_OUT_OF_MEMORY, String(err));
      break;
    }
    created++;
  }
  // Four bytes of pixels each, but each resource is charged what holding it costs the host.
  assert.ok(created > 0 && created < 200, `${created} 1x1 resources fit in 64 KiB`);
  assert.equal(device.counters.snapshot().device.outOfMemory, 1);
  await gpu.close();
});

test('gpu: hostile commands get the error the spec names, and the device keeps serving', async () => {
  const { device, gpu, memoryBytes } = await open({ maxResourceMemory: 1 << 20 });
  const u32 = (...v: number[]): Uint8Array => new Uint8Array(new Uint32Array(v).buffer);
  const cmd = (type: number, ...v: number[]): Promise<Uint8Array> => gpu.command(type, u32(...v));
  await rejectsWith(cmd(0x0999), GpuResp.ERR_UNSPEC);
  await rejectsWith(cmd(GpuCmd.UPDATE_CURSOR, 0, 0, 0, 0, 0, 0, 0, 0), GpuResp.ERR_UNSPEC); // cursor command on controlq
  await rejectsWith(cmd(GpuCmd.RESOURCE_CREATE_2D, 1, 2), GpuResp.ERR_UNSPEC); // short
  await rejectsWith(cmd(GpuCmd.RESOURCE_CREATE_2D, 0, 2, 4, 4), GpuResp.ERR_INVALID_RESOURCE_ID);
  await rejectsWith(cmd(GpuCmd.RESOURCE_CREATE_2D, 9, 999, 4, 4), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.RESOURCE_CREATE_2D, 9, 2, 0, 4), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.RESOURCE_CREATE_2D, 9, 2, 0xffffffff, 0xffffffff), GpuResp.ERR_OUT_OF_MEMORY);
  await rejectsWith(cmd(GpuCmd.RESOURCE_CREATE_2D, 9, 2, 1024, 1024), GpuResp.ERR_OUT_OF_MEMORY); // 4 MiB > 1 MiB bound
  await cmd(GpuCmd.RESOURCE_CREATE_2D, 9, 2, 16, 16);
  await rejectsWith(cmd(GpuCmd.RESOURCE_CREATE_2D, 9, 2, 16, 16), GpuResp.ERR_INVALID_RESOURCE_ID); // twice
  // Backing outside guest RAM, straddling its end, a huge count, a count the request does not hold.
  await rejectsWith(cmd(GpuCmd.RESOURCE_ATTACH_BACKING, 9, 1, memoryBytes, 0, 4096, 0), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.RESOURCE_ATTACH_BACKING, 9, 1, memoryBytes - 16, 0, 4096, 0), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.RESOURCE_ATTACH_BACKING, 9, 1, 0, 1, 4096, 0), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.RESOURCE_ATTACH_BACKING, 9, 0xffffffff, 0, 0, 4096, 0), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.RESOURCE_ATTACH_BACKING, 9, 3, 0, 0, 4096, 0), GpuResp.ERR_UNSPEC);
  await rejectsWith(cmd(GpuCmd.RESOURCE_ATTACH_BACKING, 77, 1, 0, 0, 4096, 0), GpuResp.ERR_INVALID_RESOURCE_ID);
  await rejectsWith(cmd(GpuCmd.RESOURCE_DETACH_BACKING, 9, 0), GpuResp.ERR_UNSPEC); // none attached
  // Transfers need a backing, stay inside the resource, and read only inside the backing.
  await rejectsWith(cmd(GpuCmd.TRANSFER_TO_HOST_2D, 0, 0, 16, 16, 0, 0, 9, 0), GpuResp.ERR_INVALID_PARAMETER);
  await cmd(GpuCmd.RESOURCE_ATTACH_BACKING, 9, 1, 0x100000, 0, 512, 0); // half of 16x16x4
  await rejectsWith(cmd(GpuCmd.TRANSFER_TO_HOST_2D, 0, 0, 16, 16, 0, 0, 9, 0), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.TRANSFER_TO_HOST_2D, 8, 0, 9, 1, 0, 0, 9, 0), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.TRANSFER_TO_HOST_2D, 0xffffffff, 0, 2, 1, 0, 0, 9, 0), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.TRANSFER_TO_HOST_2D, 0, 0, 1, 1, 0xffffffff, 0xffffffff, 9, 0), GpuResp.ERR_INVALID_PARAMETER);
  await cmd(GpuCmd.TRANSFER_TO_HOST_2D, 0, 0, 16, 8, 0, 0, 9, 0);
  await rejectsWith(cmd(GpuCmd.RESOURCE_ATTACH_BACKING, 9, 1, 0, 0, 4096, 0), GpuResp.ERR_UNSPEC); // already attached
  // Scanouts and flushes.
  await rejectsWith(cmd(GpuCmd.SET_SCANOUT, 0, 0, 16, 16, 1, 9), GpuResp.ERR_INVALID_SCANOUT_ID);
  await rejectsWith(cmd(GpuCmd.SET_SCANOUT, 0, 0, 16, 16, 0, 10), GpuResp.ERR_INVALID_RESOURCE_ID);
  await rejectsWith(cmd(GpuCmd.SET_SCANOUT, 1, 0, 16, 16, 0, 9), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.SET_SCANOUT, 0, 0, 0, 16, 0, 9), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.RESOURCE_CREATE_2D, 11, 2, 1, 16385), GpuResp.ERR_INVALID_PARAMETER); // a side past any mode
  await cmd(GpuCmd.RESOURCE_CREATE_2D, 11, 2, 8192, 1);
  await rejectsWith(cmd(GpuCmd.SET_SCANOUT, 0, 0, 8192, 1, 0, 11), GpuResp.ERR_INVALID_PARAMETER); // wider than any mode
  await cmd(GpuCmd.RESOURCE_UNREF, 11, 0);
  await rejectsWith(cmd(GpuCmd.RESOURCE_FLUSH, 0, 0, 17, 1, 9, 0), GpuResp.ERR_INVALID_PARAMETER);
  await rejectsWith(cmd(GpuCmd.RESOURCE_FLUSH, 0, 0, 1, 1, 10, 0), GpuResp.ERR_INVALID_RESOURCE_ID);
  await rejectsWith(cmd(GpuCmd.RESOURCE_UNREF, 10, 0), GpuResp.ERR_INVALID_RESOURCE_ID);
  // The resource memory bound is given back by UNREF.
  await cmd(GpuCmd.RESOURCE_UNREF, 9, 0);
  assert.equal(device.counters.snapshot().device.resourceBytes, 0);
  await cmd(GpuCmd.RESOURCE_CREATE_2D, 9, 2, 511, 511);
  // Still alive and serving.
  assert.equal((await gpu.core.transport.getStatus()) & DeviceStatus.DEVICE_NEEDS_RESET, 0);
  assert.equal((await gpu.displayInfo()).length, 1);
  assert.equal(device.counters.snapshot().queues[0]!.errors, 31, "each error response counted");
  await gpu.close();
});

test('gpu: device options out of range are refused with a sentence', () => {
  assert.throws(() => new GpuDevice({ scanouts: [] }), /0 scanouts/);
  assert.throws(() => new GpuDevice({ scanouts: [{ width: 5000, height: 100 }] }), /display mode 5000x100/);
  assert.throws(() => new GpuDevice({ maxResourceMemory: -1 }), /maxResourceMemory/);
});

test('gpu: EDID blocks stay valid at the largest mode (the pixel clock fits its 16 bits by lowering the refresh)', async () => {
  const { buildEdid } = await import('../../../src/devices/gpu/edid.ts');
  for (const [w, h] of [[16, 16], [1920, 1080], [4095, 4095]] as const) {
    const e = buildEdid(w, h);
    assert.equal(e.reduce((s, b) => s + b, 0) % 256, 0, `checksum at ${w}x${h}`);
    assert.deepEqual([e[56]! | ((e[58]! >> 4) << 8), e[59]! | ((e[61]! >> 4) << 8)], [w, h]);
    const clock10kHz = e[54]! | (e[55]! << 8);
    assert.ok(clock10kHz > 0, `a pixel clock at ${w}x${h}`);
  }
  assert.throws(() => buildEdid(4096, 10), /EDID mode 4096x10/);
});
