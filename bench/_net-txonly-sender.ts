/**
 * The sender bench/frontend-net.ts and bench/frontend-net-trees.ts run through paravirt's net
 * driver: DPDK testpmd's txonly, in place. txonly copies its Ethernet, IPv4 and UDP headers (42
 * bytes) into each mbuf of a burst and leaves the payload as the buffer holds it, then hands the
 * burst to tx_burst; here the headers go into every frame, whether or not the buffer held them
 * already, BURST at a time with trySendBurst(), waiting with whenWritable() when the ring is full.
 * They are written as ten 32-bit words and a 16-bit one through the buffer's DataView, as
 * rte_memcpy copies them with a few wide stores: a TypedArray.set() of 42 bytes took longer than
 * the driver's own work on a frame (docs/performance.md, "A sender's turn, its headers, and the
 * ring a burst at a time").
 */
import { DEFAULT_POLL_MICROS } from '../src/devices/host-options.ts';
import type { FrameWriter, NetDriver } from '../src/devices/net/driver.ts';

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
  // The headers as the words that are stored, read little-endian and stored so.
  const template = new DataView(headers.buffer);
  const words = Uint32Array.from({ length: TXONLY_HEADER_BYTES >> 2 }, (_, i) => template.getUint32(4 * i, true));
  const tail = template.getUint16(TXONLY_HEADER_BYTES - 2, true);
  const writeFrame: FrameWriter = (_buffer, _length, _again, fields) => {
    for (let i = 0; i < words.length; i++) fields.setUint32(4 * i, words[i], true);
    fields.setUint16(TXONLY_HEADER_BYTES - 2, tail, true);
  };
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
