/**
 * How full a queue is, as a device's counters report it: the chains the device holds in flight
 * and the ring's size, read from the live queue when a snapshot is taken.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlkDevice } from '../../../src/devices/blk/device.ts';
import { BlkDriver } from '../../../src/devices/blk/driver.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import type { Op, TransferDone } from '../../../src/storage/block-backend.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';

/** A disk whose transfers wait until released, so requests stay in flight; `held` resolves once `n` wait. */
class HeldDisk extends MemoryBackend {
  private readonly waiting: (() => void)[] = [];
  private want = 0;
  private reached: (() => void) | undefined;

  held(n: number): Promise<void> {
    this.want = n;
    return this.waiting.length >= n ? Promise.resolve() : new Promise((resolve) => (this.reached = resolve));
  }

  override transfer<T>(op: Op, offset: number, segments: readonly Uint8Array[], done: TransferDone<T>, tag: T): void {
    this.waiting.push(() => super.transfer(op, offset, segments, done, tag));
    if (this.waiting.length >= this.want) this.reached?.();
  }

  release(): void {
    for (const go of this.waiting.splice(0)) go();
  }
}

test('a snapshot shows the chains the device holds and the ring size, and none once they are returned', async () => {
  const disk = new HeldDisk(64 * 512);
  const device = new BlkDevice({ backend: disk, queues: 2 });
  assert.deepEqual(device.counters.snapshot().fill, [{ inFlight: 0, size: 0 }, { inFlight: 0, size: 0 }], 'no queue runs yet');
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const blk = await BlkDriver.open(transport, { queueSize: 64 });
  try {
    const reads = [0, 8, 16].map((sector) => blk.read(sector, 4096));
    await disk.held(3);
    const fill = device.counters.snapshot().fill;
    assert.equal(fill.reduce((n, f) => n + f.inFlight, 0), 3, 'three reads held by the device');
    assert.deepEqual(fill.map((f) => f.size), [64, 64]);
    disk.release();
    await Promise.all(reads);
    assert.deepEqual(device.counters.snapshot().fill.map((f) => f.inFlight), [0, 0]);
  } finally {
    await blk.close();
  }
  assert.deepEqual(device.counters.snapshot().fill, [{ inFlight: 0, size: 0 }, { inFlight: 0, size: 0 }], 'the driver reset the device');
});

test('without a transport the fill is zero for every queue, and the counters are unchanged', () => {
  const counters = new DeviceCounters(3);
  counters.queue(1).requests = 5;
  const snap = counters.snapshot();
  assert.deepEqual(snap.fill, [0, 1, 2].map(() => ({ inFlight: 0, size: 0 })));
  assert.equal(snap.queues[1].requests, 5);
});
