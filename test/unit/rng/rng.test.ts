import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { RngDriver } from '../../../src/devices/rng/driver.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DescFlag, DeviceStatus, Feature, hasFeature } from '../../../src/virtio/constants.ts';
import { DeviceNeedsResetError } from '../../../src/virtio/driver-core.ts';
import { WARN, captureLog } from '../virtio/framework-fixture.ts';

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`rng over mmio (${ring} ring): reads return the requested number of random bytes`, async () => {
    const { transport } = createLoopback(new RngDevice(), { memoryBytes: 1 << 20 });
    const rng = await RngDriver.open(transport, { packed });
    assert.equal(hasFeature(rng.core.features, Feature.RING_PACKED), packed);
    assert.ok(hasFeature(rng.core.features, Feature.IN_ORDER), 'every ring feature of the framework is in use');
    const a = await rng.read(100);
    const b = await rng.read(100);
    assert.equal(a.length, 100);
    assert.notDeepEqual(a, b, 'two reads of random bytes differ');
    assert.ok(a.some((x) => x !== 0));
    assert.equal((await rng.read(0)).length, 0);
    await rng.close();
  });

  test(`rng over mmio (${ring} ring): more requests than the ring holds wait for room`, async () => {
    const { transport } = createLoopback(new RngDevice({ maxQueueSize: 4 }), { memoryBytes: 1 << 20 });
    const rng = await RngDriver.open(transport, { packed, chunkBytes: 16 });
    // 64 chunks of 16 bytes over a 4-entry ring.
    const data = await rng.read(1024);
    assert.equal(data.length, 1024);
    const zeroRun = data.findIndex((_, i) => i % 16 === 0 && data.subarray(i, i + 16).every((x) => x === 0));
    assert.equal(zeroRun, -1, 'every chunk was filled');
    await rng.close();
  });

  test(`rng over mmio (${ring} ring): a device bounding bytes per request still fills the read`, async () => {
    const { transport } = createLoopback(new RngDevice({ maxBytesPerRequest: 7 }), { memoryBytes: 1 << 20 });
    const rng = await RngDriver.open(transport, { packed });
    const data = await rng.read(5000);
    assert.equal(data.length, 5000);
    assert.ok(data.subarray(4990).some((x) => x !== 0));
    await rng.close();
  });
}

test('rng read lengths that are not non-negative integers are refused', async () => {
  const { transport } = createLoopback(new RngDevice(), { memoryBytes: 1 << 20 });
  const rng = await RngDriver.open(transport);
  await assert.rejects(rng.read(-1), /read length -1/);
  await assert.rejects(rng.read(1.5), /read length 1.5/);
  await rng.close();
});

test('a malicious descriptor puts the device in DEVICE_NEEDS_RESET with one log line; a reset recovers it', async () => {
  const device = captureLog();
  const { transport, host, memory } = createLoopback(new RngDevice(), { memoryBytes: 1 << 20, log: device.log });
  const driverLog = captureLog().log;
  const rng = await RngDriver.open(transport, { packed: false, log: driverLog });
  assert.equal((await rng.read(32)).length, 32);

  // Behind the driver's back, make descriptor 5 point far outside guest memory and offer it (§2.7.5, §2.7.6).
  const desc = host.state.queueArea(0, 'desc');
  const avail = host.state.queueArea(0, 'driver');
  memory.writeU64(desc + 5 * 16, 0x7fff_0000_0000n);
  memory.writeU32(desc + 5 * 16 + 8, 64);
  memory.writeU16(desc + 5 * 16 + 12, DescFlag.WRITE);
  const idx = memory.readU16(avail + 2);
  memory.writeU16(avail + 4 + 2 * (idx % 256), 5);
  memory.writeU16(avail + 2, idx + 1);
  transport.notify(0);

  assert.equal(host.state.status & DeviceStatus.DEVICE_NEEDS_RESET, DeviceStatus.DEVICE_NEEDS_RESET);
  await assert.rejects(rng.read(16), DeviceNeedsResetError);
  const warnings = device.lines.filter((l) => l.level === WARN);
  assert.equal(warnings.length, 1);
  assert.equal(warnings[0].queue, 'rng.q0');
  assert.equal(warnings[0].rule, 'buffer outside guest memory');

  const again = await RngDriver.open(transport, { packed: false, log: driverLog });
  assert.equal((await again.read(64)).length, 64);
  assert.equal(host.state.status & DeviceStatus.DEVICE_NEEDS_RESET, 0);
  await again.close();
});
