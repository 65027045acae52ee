/**
 * A device in a worker thread for split-ring-threads.test.ts: it echoes each chain's readable
 * bytes into its writable part, and sleeps on a doorbell word when the ring is empty, exactly as
 * a device would wait for available buffer notifications.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ChainWriter } from '../../../src/virtio/chain-io.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import type { QueueConfig } from '../../../src/virtio/queue.ts';
import { SplitDeviceQueue } from '../../../src/virtio/split-ring.ts';
import { Doorbell, ring, type EchoDeviceData } from './split-ring-fixture.ts';

const data = workerData as EchoDeviceData;
const memory = new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(data.memory) }]);
const config: QueueConfig = data.config;
const dev = new SplitDeviceQueue(memory, config, 'echo');
const doorbells = new Int32Array(data.doorbells);

for (;;) {
  const seen = Atomics.load(doorbells, Doorbell.KICK);
  let chain;
  while ((chain = dev.pop()) !== null) {
    const writer = new ChainWriter(chain);
    for (const src of chain.readable) writer.write(src);
    dev.push(chain, writer.written);
  }
  if (dev.publish()) ring(doorbells, Doorbell.INTERRUPT);
  if (Atomics.load(doorbells, Doorbell.STOP) !== 0) break;
  // Ask for a notification, then look once more: buffers made available before the request was
  // visible were not notified, and must be popped rather than slept on (§2.7.10).
  if (dev.enableNotifications()) continue;
  Atomics.wait(doorbells, Doorbell.KICK, seen);
  dev.disableNotifications();
}
parentPort?.postMessage({ inFlight: dev.inFlight });
