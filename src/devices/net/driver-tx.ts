/**
 * The driver's transmit path (§5.1.6.2): each frame goes out in one device-readable buffer, a
 * virtio_net_hdr first. Buffers for frames up to the MTU come from a pool of at most one per
 * transmit ring entry, so a burst waits for the device instead of exhausting memory; a GSO frame
 * larger than a pool buffer gets its own.
 */
import type { VirtioDriver } from '../../virtio/driver-core.ts';
import type { NetDriverCounters } from './counters.ts';
import { plainFrameLimit } from './offload.ts';
import { ETH_HLEN, GsoType, MAX_GSO_FRAME, NET_HDR_SIZE, type Offload, encodeNetHeader } from './wire.ts';

export class NetTransmitter {
  private readonly slots: number[] = [];
  private slotsMade = 0;
  private readonly waiters: (() => void)[] = [];
  private closed = false;
  /** Pool buffers hold a header and the largest plain frame. */
  private readonly slotSize: number;

  constructor(
    private readonly core: VirtioDriver,
    mtu: number,
    private readonly counters: NetDriverCounters,
  ) {
    this.slotSize = NET_HDR_SIZE + plainFrameLimit(mtu);
  }

  /** The largest frame without GSO. */
  get plainLimit(): number {
    return this.slotSize - NET_HDR_SIZE;
  }

  /** Transmit `frame` on the transmitq of `pair` (in use, checked by the caller); `pairs` in use size the pool. */
  async send(frame: Uint8Array, meta: Offload, pair: number, pairs: number): Promise<void> {
    const limit = meta.gsoType === GsoType.NONE ? this.plainLimit : MAX_GSO_FRAME;
    if (frame.length < ETH_HLEN || frame.length > limit) {
      throw new RangeError(`net: a frame of ${frame.length} bytes is outside ${ETH_HLEN}..${limit} bytes`);
    }
    const bytes = NET_HDR_SIZE + frame.length;
    const { dma, memory } = this.core.transport;
    const pooled = bytes <= this.slotSize;
    const addr = pooled ? await this.take(pairs) : dma.alloc(bytes, 16);
    if (addr === undefined) throw new Error(`net: DMA memory exhausted sending a frame of ${frame.length} bytes`);
    try {
      const block = memory.slice(addr, bytes);
      encodeNetHeader(meta, 0, block);
      block.set(frame, NET_HDR_SIZE);
      await this.core.queue(2 * pair + 1).submit([{ addr, len: bytes }], []);
      this.counters.txPackets++;
      this.counters.txBytes += frame.length;
    } finally {
      if (pooled) this.put(addr);
      else dma.free(addr);
    }
  }

  /** The driver closed: senders waiting for a buffer fail, the pool's memory goes back. */
  close(): void {
    this.closed = true;
    for (const wake of this.waiters.splice(0)) wake();
    for (const addr of this.slots.splice(0)) this.core.transport.dma.free(addr);
  }

  /** A pool buffer; at most one per transmit ring entry of the pairs in use exist. */
  private async take(pairs: number): Promise<number | undefined> {
    for (;;) {
      const addr = this.slots.pop();
      if (addr !== undefined) return addr;
      if (this.closed) return undefined;
      if (this.slotsMade < this.core.queue(1).size * pairs) {
        const made = this.core.transport.dma.alloc(this.slotSize, 16);
        if (made !== undefined) this.slotsMade++;
        return made;
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  private put(addr: number): void {
    if (this.closed) {
      this.core.transport.dma.free(addr);
      return;
    }
    this.slots.push(addr);
    this.waiters.shift()?.();
  }
}
