/**
 * The sender bench/frontend-net.ts and bench/frontend-net-trees.ts run through paravirt's net
 * driver: DPDK testpmd's txonly, in place. txonly copies its Ethernet, IPv4 and UDP headers (42
 * bytes) into each mbuf of a burst and leaves the payload as the buffer holds it, then hands the
 * burst to tx_burst; here the headers go into every frame, whether or not the buffer held them
 * already, BURST at a time with trySendBurst(), waiting with whenWritable() when the ring is full.
 */
import { DEFAULT_POLL_MICROS } from '../src/devices/host-options.ts';
import type { NetDriver } from '../src/devices/net/driver.ts';

export const FRAME_BYTES = 64;
/** Ethernet (14), IPv4 (20) and UDP (8) headers: what txonly writes into each packet. */
const TXONLY_HEADER_BYTES = 42;
/** Frames the sender writes before it queues them: txonly's burst (testpmd --burst, default 32). */
export const BURST = 32;
/** Both drivers use rings of this size (DPDK virtio-user's default). */
export const QUEUE_SIZE = 256;
/** The driver's poll budget: the back-end's default (`--poll-us`). */
export const POLL_MICROS = DEFAULT_POLL_MICROS;

/** Start sending through `net` until stop(), which resolves once the sender has stopped (or rejects with what ended it). */
export function startTxonlySender(net: NetDriver): { stop(): Promise<void> } {
  const headers = new Uint8Array(TXONLY_HEADER_BYTES).fill(0xff, 0, 6);
  headers.set(net.mac, 6);
  const writeFrame = (buffer: Uint8Array): void => buffer.set(headers);
  let running = true;
  const sender = (async (): Promise<void> => {
    while (running) {
      while (running && net.trySendBurst(BURST, FRAME_BYTES, writeFrame) > 0);
      if (running) await net.whenWritable();
    }
  })();
  return {
    stop: (): Promise<void> => {
      running = false;
      return sender;
    },
  };
}
