/**
 * The driver's transmit path (§5.1.6.2): each frame goes out in one device-readable buffer, a
 * virtio_net_hdr first. Buffers for frames up to the MTU are transmit slots, at most one per
 * transmit ring entry, made once and reused: a slot is its DMA buffer, a view of it, its segment
 * and the request RequestQueue calls back, so sending a frame allocates nothing. A burst waits
 * for the device instead of exhausting memory; a GSO frame larger than a slot gets its own buffer.
 *
 * Three ways to send: trySend() copies a finished frame into a free slot and returns at once
 * (false when none is free; whenWritable() says when one is), the path for a sender that must
 * not allocate per frame; trySendBurst() is the same without the copy, a burst at a time: the
 * caller writes each frame straight into its slot, as a NIC driver builds a packet in its DMA
 * buffer; send() waits for a slot and resolves once the device has taken the frame.
 *
 * A slot goes back to the free list only from the queue's completion (or failure) of its
 * request, so neither path hands out a buffer the device may still be reading.
 *
 * A transmitq that failed (DEVICE_NEEDS_RESET, a vhost-user back-end gone, a ring fault) fails
 * every request at once and gives its slot straight back: trySend() and trySendBurst() would find
 * a free slot every time and a sender's loop would never yield. They throw instead, as for a
 * closed driver, before taking a slot, so no frame is written or counted.
 */
import type { VirtioDriver } from '../../virtio/driver-core.ts';
import type { ReadableRequest, RequestQueue } from '../../virtio/request-queue.ts';
import type { Segment } from '../../virtio/queue.ts';
import type { NetDriverCounters } from './counters.ts';
import { plainFrameLimit } from './offload.ts';
import { ETH_HLEN, GsoType, MAX_GSO_FRAME, NET_HDR_SIZE, type Offload, encodeNetHeader } from './wire.ts';

const NO_SEGMENTS: readonly Segment[] = [];
/** Bytes of a CPU cache line (x86-64 and most of arm64). */
const CACHE_LINE = 64;
/** What a send on a closed driver throws. */
const CLOSED = 'net: the driver is closed';

/**
 * Writes one frame of `length` bytes into `buffer`, from its offset 0: the frame area of a
 * transmit buffer (after the virtio_net_hdr), at least `length` bytes long, lent for the call
 * only (the device reads it once the call returns). `again` is true when this same writer
 * function wrote the buffer's last frame, which it still holds: a sender repeating a template
 * writes it whole only when `again` is false and otherwise rewrites just the bytes that vary.
 * `fields` is the same frame area as a DataView, made once per buffer, for writing headers a
 * field or a word at a time: V8 compiles a DataView store to one machine store, where
 * TypedArray.set() is a call into the runtime that, for the 42 bytes of an Ethernet, IPv4 and
 * UDP header, took longer than all of the driver's own work on the frame (docs/performance.md,
 * "A sender's turn, its headers, and the ring a burst at a time").
 */
export type FrameWriter = (buffer: Uint8Array, length: number, again: boolean, fields: DataView) => void;

/** One transmit buffer and the request that carries it, reused frame after frame. */
class TxSlot implements ReadableRequest {
  /** The buffer's one segment; its length is set per frame. */
  private readonly segment: { readonly addr: number; len: number };
  readonly out: readonly Segment[];
  readonly inSegs = NO_SEGMENTS;
  /** The buffer past the header, where the frame goes: a view made once. */
  readonly frameArea: Uint8Array;
  /** The same frame area as a DataView, made once (FrameWriter's `fields`). */
  readonly frameFields: DataView;
  /** Frame bytes now in the buffer. */
  private frameBytes = 0;
  /** The FrameWriter that wrote the frame the buffer holds; undefined when the frame was copied in. */
  writer: FrameWriter | undefined;
  /** The offload metadata whose header the buffer holds (undefined: none written yet). */
  private headerMeta: Offload | undefined;
  /** Settles a send() waiting for this frame; undefined for trySend(). */
  private settle: ((err: Error | undefined) => void) | undefined;

  constructor(
    private readonly pool: NetTransmitter,
    readonly addr: number,
    /** The whole buffer, a view made once. */
    readonly view: Uint8Array,
  ) {
    this.segment = { addr, len: 0 };
    this.out = [this.segment];
    this.frameArea = view.subarray(NET_HDR_SIZE);
    this.frameFields = new DataView(view.buffer, view.byteOffset + NET_HDR_SIZE, view.length - NET_HDR_SIZE);
  }

  /** Copy a finished frame into the buffer, header and all. */
  copyIn(frame: Uint8Array, meta: Offload, settle: ((err: Error | undefined) => void) | undefined): void {
    this.frameArea.set(frame);
    this.writer = undefined;
    this.prepare(frame.length, meta, settle);
  }

  /** Write the header for a frame of `length` bytes now in the frame area (§5.1.6.2). */
  prepare(length: number, meta: Offload, settle: ((err: Error | undefined) => void) | undefined): void {
    // The header is written again only for other offload metadata: a sender repeating one
    // (NO_OFFLOAD, say) finds it in the buffer still, which the device only reads.
    if (meta !== this.headerMeta) {
      encodeNetHeader(meta, 0, this.view);
      this.headerMeta = meta;
    }
    // Each field is stored only when it changes: a sender repeating one frame length stores none
    // of them, and every store queued here waits behind the frame line's miss (trySendBurst).
    const len = NET_HDR_SIZE + length;
    if (this.segment.len !== len) {
      this.segment.len = len;
      this.frameBytes = length;
    }
    if (this.settle !== settle) this.settle = settle;
  }

  completed(): void {
    const settle = this.settle;
    this.pool.sent(this.frameBytes);
    this.pool.put(this);
    if (settle !== undefined) {
      this.settle = undefined;
      settle(undefined);
    }
  }

  failed(err: Error): void {
    const settle = this.settle;
    this.settle = undefined;
    // A send() hears of it; a frame given to trySend() is counted lost.
    if (settle === undefined) this.pool.failedOne();
    this.pool.put(this);
    settle?.(err);
  }
}

export class NetTransmitter {
  /**
   * Free slots, first in first out (a ring buffer of one entry per slot there can be): with a
   * device that returns buffers in order, each slot then goes out on the same descriptor and
   * available ring entry every time round, which the split ring then finds already written
   * (split/driver.ts writeDescriptor).
   */
  private readonly free: (TxSlot | undefined)[];
  private freeHead = 0;
  private freeCount = 0;
  private slotsMade = 0;
  private readonly waiters: (() => void)[] = [];
  private closed = false;
  /** Slot buffers hold a header and the largest plain frame. */
  private readonly slotSize: number;
  /** The slots of the burst trySendBurst() is sending, at most maxBurst of them. */
  private readonly burst: TxSlot[] = [];
  /** The largest burst: one transmit ring's worth. */
  readonly maxBurst: number;
  /** A FrameWriter of trySendBurst() is running. */
  private writing = false;

  constructor(
    private readonly core: VirtioDriver,
    mtu: number,
    private readonly counters: NetDriverCounters,
    /** Queue pairs the device has: at most one slot per transmit ring entry of each is made. */
    maxPairs: number,
  ) {
    this.slotSize = NET_HDR_SIZE + plainFrameLimit(mtu);
    this.free = new Array<TxSlot | undefined>(core.queue(1).size * maxPairs).fill(undefined);
    this.maxBurst = core.queue(1).size;
  }

  /** The largest frame without GSO. */
  get plainLimit(): number {
    return this.slotSize - NET_HDR_SIZE;
  }

  /**
   * Copy `frame` into a free transmit slot and queue it on the transmitq of `pair` (in use,
   * checked by the caller); false when every slot is in flight (see whenWritable). Only frames
   * that fit a slot (no GSO beyond the MTU) go this way.
   */
  trySend(frame: Uint8Array, meta: Offload, pair: number, pairs: number): boolean {
    const length = frame.length;
    this.check(length, this.plainLimit);
    const queue = this.core.queue(2 * pair + 1);
    if (queue.failure !== undefined) this.refuse(queue, queue.failure);
    const slot = this.takeNow(length, pairs, queue);
    if (slot === undefined) return false;
    slot.copyIn(frame, meta, undefined);
    queue.start(slot);
    return true;
  }

  /**
   * trySend() with the frames written in place, a burst at a time: up to `count` free slots are
   * taken, `write` fills `length` bytes of each one's frame area (told whether it wrote that
   * slot's last frame itself), and only then are they queued, in that order. Returns how many
   * went out, 0 when every slot is in flight. A writer that throws leaves every slot of the
   * burst free and nothing sent; the error goes to the caller.
   *
   * Frames first, then descriptors, as a NIC driver's burst transmit (DPDK's txonly fills its 32
   * mbufs, then calls tx_burst): the first store into each frame's line misses (the device's
   * CPU read it since the slot's last frame), and x86 commits stores in order, so a miss stalls
   * every store behind it once the store buffer is full. Frame after frame, the burst's misses
   * are in flight together; frame by frame, each waits behind the bookkeeping of the one before.
   * A writer storing through FrameWriter's `fields` needs nothing more. Taking each frame's line
   * first, in a loop of its own, saved a writer calling TypedArray.set() about a tenth of its
   * time and cost a `fields` writer as much (docs/performance.md, "A sender's turn, its headers,
   * and the ring a burst at a time").
   */
  trySendBurst(count: number, length: number, write: FrameWriter, meta: Offload, pair: number, pairs: number): number {
    this.check(length, this.plainLimit);
    if (!(count >= 1 && count <= this.maxBurst) || count !== Math.floor(count)) {
      throw new RangeError(`net: a burst of ${count} frames is outside 1..${this.maxBurst}`);
    }
    // The burst's slots are in one array of the transmitter: a writer that started a burst of its
    // own would overwrite them (trySend and send take slots apart and may be called).
    if (this.writing) throw new Error('net: a frame writer cannot write frames itself');
    const queue = this.core.queue(2 * pair + 1);
    if (queue.failure !== undefined) this.refuse(queue, queue.failure);
    const burst = this.burst;
    const n = this.takeBurst(count, length, pairs, queue);
    let k = 0;
    this.writing = true;
    try {
      for (; k < n; k++) {
        const slot = burst[k];
        write(slot.frameArea, length, slot.writer === write, slot.frameFields);
      }
    } catch (err) {
      // The buffers before k hold this writer's frames whole; the one it was writing, none.
      for (let i = 0; i < k; i++) burst[i].writer = write;
      burst[k].writer = undefined;
      for (let i = 0; i < n; i++) this.put(burst[i]);
      throw err;
    } finally {
      this.writing = false;
    }
    for (k = 0; k < n; k++) {
      const slot = burst[k];
      if (slot.writer !== write) slot.writer = write;
      slot.prepare(length, meta, undefined);
    }
    queue.startReadable(burst, n, NET_HDR_SIZE + length);
    return n;
  }

  /** Resolves when a transmit slot may be free for `pairs` in use (at once when one is, or the driver closed). */
  whenWritable(pairs: number): Promise<void> {
    if (this.freeCount > 0 || this.closed || this.slotsMade < this.core.queue(1).size * pairs) return Promise.resolve();
    return new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  /** Transmit `frame` on the transmitq of `pair`; resolves when the device has taken it. */
  async send(frame: Uint8Array, meta: Offload, pair: number, pairs: number): Promise<void> {
    const limit = meta.gsoType === GsoType.NONE ? this.plainLimit : MAX_GSO_FRAME;
    this.check(frame.length, limit);
    if (NET_HDR_SIZE + frame.length > this.slotSize) {
      await this.sendLarge(frame, meta, pair);
      return;
    }
    let slot = this.take(pairs);
    while (slot === undefined) {
      // With no slot in flight, none will come back to wait for: the allocator is exhausted.
      if (this.closed || this.slotsMade === this.freeCount) throw new Error(`net: DMA memory exhausted sending a frame of ${frame.length} bytes`);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
      slot = this.take(pairs);
    }
    const taken = slot;
    await new Promise<void>((resolve, reject) => {
      taken.copyIn(frame, meta, (err) => (err === undefined ? resolve() : reject(err)));
      this.core.queue(2 * pair + 1).start(taken);
    });
  }

  /** The driver closed: senders waiting for a buffer fail, the slots' memory goes back. */
  close(): void {
    this.closed = true;
    for (const wake of this.waiters.splice(0)) wake();
    for (let slot = this.takeFree(); slot !== undefined; slot = this.takeFree()) this.core.transport.dma.free(slot.addr);
  }

  /** A slot's frame went out. */
  sent(bytes: number): void {
    this.counters.txPackets++;
    this.counters.txBytes += bytes;
  }

  /** A slot's frame did not go out (the queue failed). */
  failedOne(): void {
    this.counters.txFailed++;
  }

  /** A slot is free again. */
  put(slot: TxSlot): void {
    if (this.closed) {
      this.core.transport.dma.free(slot.addr);
      return;
    }
    const size = this.free.length;
    const at = this.freeHead + this.freeCount;
    this.free[at >= size ? at - size : at] = slot;
    this.freeCount++;
    if (this.waiters.length > 0) this.waiters.shift()!();
  }

  /** The free slot freed longest ago, or undefined. */
  private takeFree(): TxSlot | undefined {
    if (this.freeCount === 0) return undefined;
    const slot = this.free[this.freeHead];
    this.free[this.freeHead] = undefined;
    this.freeHead = this.freeHead + 1 === this.free.length ? 0 : this.freeHead + 1;
    this.freeCount--;
    return slot;
  }

  private check(length: number, limit: number): void {
    // The negated range test also refuses NaN; a fraction is refused by name.
    if (!(length >= ETH_HLEN && length <= limit) || length !== Math.floor(length)) {
      throw new RangeError(`net: a frame of ${length} bytes is outside ${ETH_HLEN}..${limit} bytes`);
    }
  }

  /**
   * A free slot for trySend() on `queue`, undefined when all are in flight; throws when none
   * will ever come back.
   */
  private takeNow(length: number, pairs: number, queue: RequestQueue): TxSlot | undefined {
    let slot = this.take(pairs);
    if (slot === undefined && this.reclaim(queue)) slot = this.take(pairs);
    if (slot === undefined) this.noSlot(length);
    return slot;
  }

  /**
   * Up to `count` free slots into `burst`, for trySend*() on `queue`; returns how many, 0 when
   * all are in flight, and throws when none will ever come back. Short of slots, it first takes
   * back what the device has used meanwhile (up to RECLAIMS_PER_TURN times a turn:
   * RequestQueue.reclaim), rather than leave the caller to wait for a poll turn, as DPDK's
   * transmit path frees used descriptors when it runs short.
   */
  private takeBurst(count: number, length: number, pairs: number, queue: RequestQueue): number {
    if (this.freeCount < count) this.reclaim(queue);
    const burst = this.burst;
    // Free slots first, taken off the FIFO with its head and count stored once per burst (an
    // entry taken is left as it is: it is outside the count, and rewritten when a slot comes back).
    const free = this.free;
    const n = Math.min(count, this.freeCount);
    let head = this.freeHead;
    for (let i = 0; i < n; i++) {
      burst[i] = free[head]!;
      head = head + 1 === free.length ? 0 : head + 1;
    }
    this.freeHead = head;
    this.freeCount -= n;
    // Then slots made, while fewer than one per ring entry exist.
    let made = n;
    while (made < count) {
      const slot = this.take(pairs);
      if (slot === undefined) break;
      burst[made++] = slot;
    }
    if (made === 0) this.noSlot(length);
    return made;
  }

  /**
   * RequestQueue.reclaim() for a sender short of slots. The device may have broken the ring
   * meanwhile, which fails the queue there: then the send throws as for a queue found failed,
   * before it takes a slot.
   */
  private reclaim(queue: RequestQueue): boolean {
    if (!queue.reclaim()) return false;
    if (queue.failure !== undefined) this.refuse(queue, queue.failure);
    return true;
  }

  /** `queue` failed: no frame goes out on it again, and the sender must hear so rather than find a slot for ever. */
  private refuse(queue: RequestQueue, failure: Error): never {
    if (this.closed) throw new Error(CLOSED);
    throw new Error(`net: transmitq ${queue.name} failed: ${failure.message}`, { cause: failure });
  }

  /** No slot is free: throws when none will ever come back (the driver closed, or memory ran out with none in flight). */
  private noSlot(length: number): void {
    if (this.closed) throw new Error(CLOSED);
    if (this.slotsMade === this.freeCount) throw new Error(`net: DMA memory exhausted sending a frame of ${length} bytes`);
  }

  /** A free slot, made when fewer than one per transmit ring entry of the pairs in use exist; undefined when none. */
  private take(pairs: number): TxSlot | undefined {
    const slot = this.takeFree();
    if (slot !== undefined || this.closed) return slot;
    if (this.slotsMade >= this.core.queue(1).size * pairs) return undefined;
    const { dma, memory } = this.core.transport;
    // A slot starts a cache line, so that the header and a small frame's first 52 bytes share one
    // line: the device has read the line since the slot's last frame, and each line written again
    // is taken back from its cache (DPDK aligns its packet buffers to a line for the same reason).
    const addr = dma.alloc(this.slotSize, CACHE_LINE);
    if (addr === undefined) return undefined;
    this.slotsMade++;
    return new TxSlot(this, addr, memory.slice(addr, this.slotSize));
  }

  /** A GSO frame beyond a slot: a buffer of its own for this one frame. */
  private async sendLarge(frame: Uint8Array, meta: Offload, pair: number): Promise<void> {
    const bytes = NET_HDR_SIZE + frame.length;
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(bytes, 16);
    if (addr === undefined) throw new Error(`net: DMA memory exhausted sending a frame of ${frame.length} bytes`);
    try {
      const block = memory.slice(addr, bytes);
      encodeNetHeader(meta, 0, block);
      block.set(frame, NET_HDR_SIZE);
      await this.core.queue(2 * pair + 1).submit([{ addr, len: bytes }], []);
      this.sent(frame.length);
    } finally {
      dma.free(addr);
    }
  }
}
