/**
 * A device in a worker thread for split-ring-threads.test.ts: it echoes each chain's readable
 * bytes into its writable part, and sleeps on a doorbell word when the ring is empty, exactly as
 * a device would wait for available buffer notifications.
 */
import { parentPort, workerData } from 'node:worker_threads';
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
    let written = 0;
    for (const src of chain.readable) written += copyInto(chain.writable, written, src);
    dev.push(chain, written);
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

/** Copy `src` into the views `dst` from byte `at` of their concatenation; returns bytes copied. */
function copyInto(dst: readonly Uint8Array[], at: number, src: Uint8Array): number {
  let copied = 0;
  let skip = at;
  for (const d of dst) {
    if (skip >= d.length) {
      skip -= d.length;
      continue;
    }
    const n = Math.min(d.length - skip, src.length - copied);
    d.set(src.subarray(copied, copied + n), skip);
    copied += n;
    skip = 0;
    if (copied === src.length) break;
  }
  return copied;
}
