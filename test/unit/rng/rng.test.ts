import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { RngDriver } from '../../../src/devices/rng/driver.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { Feature, hasFeature } from '../../../src/virtio/constants.ts';

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`rng over mmio (${ring} ring): reads return the requested number of random bytes`, async () => {
    const { transport } = createLoopback(new RngDevice(), { memoryBytes: 1 << 20 });
    const rng = await RngDriver.open(transport, { packed });
    assert.equal(hasFeature(rng.core.features, Feature.RING_PACKED), packed);
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
