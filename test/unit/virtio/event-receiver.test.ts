import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { Feature, featureBit } from '../../../src/virtio/constants.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../../src/virtio/device.ts';
import type { DmaPool } from '../../../src/virtio/dma.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { BYTE_STREAM, EventQueue } from '../../../src/virtio/event-queue.ts';
import { EventReceiver } from '../../../src/virtio/event-receiver.ts';
import { FRAMEWORK_FEATURES } from '../../../src/virtio/features.ts';
import { captureLog } from './framework-fixture.ts';
import { allQueues } from './all-queues.ts';

/** A one-queue device that streams bytes to the driver, with back-pressure (a console's receiveq, say). */
class StreamDevice implements VirtioDevice {
  readonly deviceId = 0x7f;
  readonly name = 'stream';
  readonly numQueues = 1;
  readonly maxQueueSize = 16;
  readonly features = FRAMEWORK_FEATURES;
  readonly config = new Uint8Array(0);
  readonly counters = new DeviceCounters(1);
  private events: EventQueue<Uint8Array> | undefined;
  private readonly pending: Uint8Array[] = [];

  activate(ctx: DeviceContext): void {
    this.events = new EventQueue(ctx, 0, { layout: BYTE_STREAM, backlog: 2, overflow: 'refuse', onSpace: () => this.pump() });
  }

  queueNotify(index: number): void {
    if (index === 0) this.events?.kick();
  }

  reset(): void {
    this.events = undefined;
  }

  write(bytes: Uint8Array): void {
    this.pending.push(bytes);
    this.pump();
  }

  private pump(): void {
    while (this.events !== undefined && this.pending.length > 0 && this.events.offer(this.pending[0])) this.pending.shift();
  }
}

async function start(features = FRAMEWORK_FEATURES) {
  const device = new StreamDevice();
  const { log, lines } = captureLog();
  const { transport } = createLoopback(device, { memoryBytes: 1 << 20, log });
  const driver = await VirtioDriver.start(transport, { name: 'stream', deviceId: device.deviceId, features, queues: allQueues, log });
  return { device, driver, transport, lines, log };
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

for (const [name, features] of [
  ['split ring', FRAMEWORK_FEATURES & ~featureBit(Feature.RING_PACKED) & ~featureBit(Feature.IN_ORDER)],
  ['packed ring, IN_ORDER', FRAMEWORK_FEATURES],
] as const) {
  test(`${name}: a stream far larger than the posted buffers arrives whole and in order`, async () => {
    const { device, driver, transport, log } = await start(features);
    const got: number[] = [];
    const rx = new EventReceiver(driver.queue(0), transport.memory, transport.dma, { bufferSize: 7, buffers: 3, onBuffer: (b) => got.push(...b), log });
    const sent = Uint8Array.from({ length: 5000 }, (_, i) => (i * 31) & 0xff);
    for (let at = 0; at < sent.length; at += 100) device.write(sent.subarray(at, at + 100));
    while (got.length < sent.length) await settle();
    assert.deepEqual(got, [...sent]);
    assert.equal(rx.received, Math.ceil(100 / 7) * 50, 'one buffer per 7 bytes of each 100-byte chunk');
    await driver.close();
  });
}

test('the buffers stay posted until the driver closes; then their memory goes back', async () => {
  const { driver, transport, log } = await start();
  const pool = transport.dma as DmaPool;
  const before = pool.freeBytes;
  const rx = new EventReceiver(driver.queue(0), transport.memory, transport.dma, { bufferSize: 64, onBuffer: () => {}, log });
  assert.equal(pool.freeBytes, before - 16 * 64, 'a full ring of buffers by default');
  await driver.close();
  await rx.stopped;
  assert.equal(pool.freeBytes, 1 << 20, 'rings and buffers all given back');
});

test('a consumer that throws is logged and the buffer is posted again', async () => {
  const { device, driver, transport, log, lines } = await start();
  const got: number[] = [];
  new EventReceiver(driver.queue(0), transport.memory, transport.dma, {
    bufferSize: 4,
    buffers: 1,
    onBuffer: (b) => {
      if (b[0] === 1) throw new Error('consumer bug');
      got.push(...b);
    },
    log,
  });
  device.write(Uint8Array.of(1));
  device.write(Uint8Array.of(2));
  while (got.length < 1) await settle();
  assert.deepEqual(got, [2]);
  assert.ok(lines.some((l) => /event consumer failed/.test(l.msg)));
  await driver.close();
});

test('a buffer size or count that is not a positive integer is refused with a sentence naming it', async () => {
  const { driver, transport, log } = await start();
  assert.throws(() => new EventReceiver(driver.queue(0), transport.memory, transport.dma, { bufferSize: 0, onBuffer: () => {}, log }), /event buffer size 0/);
  assert.throws(() => new EventReceiver(driver.queue(0), transport.memory, transport.dma, { bufferSize: 8, buffers: 1.5, onBuffer: () => {}, log }), /event buffer count 1.5/);
  await driver.close();
});
