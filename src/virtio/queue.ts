/**
 * The one virtqueue contract, over split (§2.7) and packed (§2.8) rings alike, for each side:
 * the device side (DeviceQueue: pops chains a driver made available, returns them used) and
 * the driver side (DriverQueue: exposes buffers, collects them used).
 */
import type { ViewCache } from './memory.ts';

/** A guest-physical buffer segment, as a driver describes it. */
export interface Segment {
  readonly addr: number;
  readonly len: number;
}

/** Where a queue's three areas live in guest memory (§2.6 / §4.2.2 QueueDesc, QueueDriver, QueueDevice). */
export interface QueueAddresses {
  /** Descriptor table (split) or descriptor ring (packed). */
  readonly desc: number;
  /** Available ring (split) or driver event suppression structure (packed). */
  readonly driver: number;
  /** Used ring (split) or device event suppression structure (packed). */
  readonly device: number;
}

/** What the two sides agreed on for one queue. */
export interface QueueConfig extends QueueAddresses {
  /** Number of entries: a power of two for split rings, any value 1..32768 for packed (§2.7 / §2.8). */
  readonly size: number;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  readonly eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  readonly indirect: boolean;
  /** VIRTIO_F_IN_ORDER negotiated. */
  readonly inOrder: boolean;
}

/**
 * A driver broke a ring rule. The device that sees one stops the queue and enters
 * DEVICE_NEEDS_RESET (§2.1.1); `rule` names the rule for the one log line.
 */
export class VirtqueueError extends Error {
  constructor(
    readonly rule: string,
    detail: string,
  ) {
    super(`${rule}: ${detail}`);
    this.name = 'VirtqueueError';
  }
}

/**
 * A chain's descriptors as spans of host bytes, readable ones first: segment i is `lengths[i]`
 * bytes at `offsets[i]` of `bytes[i]` (the bytes of the guest memory region holding it). Kept as
 * numbers so that popping a chain makes no view of guest memory: ChainReader and ChainWriter read
 * and write the spans in place, and a view is made only when one is asked for.
 */
export class ChainSegments {
  /** Where views of these segments come from: the queue's cache, or none (a view per request). */
  cache: ViewCache | undefined = undefined;
  readonly bytes: Uint8Array[] = [];
  readonly offsets: number[] = [];
  readonly lengths: number[] = [];
  /** Segments in use (the lists may hold stale entries past it, from an earlier, longer chain). */
  count = 0;
  /** The first `readableCount` segments are device-readable, the rest device-writable. */
  readableCount = 0;

  /** Store one segment at index `count`, growing the lists only past their length. */
  put(bytes: Uint8Array, offset: number, length: number): void {
    const n = this.count++;
    if (n < this.bytes.length) {
      this.bytes[n] = bytes;
      this.offsets[n] = offset;
      this.lengths[n] = length;
    } else {
      this.bytes.push(bytes);
      this.offsets.push(offset);
      this.lengths.push(length);
    }
  }

  /**
   * Make these the segments of a chain of one descriptor, readable (`readableCount` 1) or
   * writable (0). A record refilled with the same buffer again (a driver's fixed buffers) stores
   * no new region bytes.
   */
  setOne(bytes: Uint8Array, offset: number, length: number, readableCount: number): void {
    if (this.bytes.length === 0) {
      this.bytes.push(bytes);
      this.offsets.push(offset);
      this.lengths.push(length);
    } else {
      if (this.bytes[0] !== bytes) this.bytes[0] = bytes;
      this.offsets[0] = offset;
      this.lengths[0] = length;
    }
    this.count = 1;
    this.readableCount = readableCount;
  }

  /** Zero-copy views of segments [from, to). */
  views(from: number, to: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let i = from; i < to; i++) {
      const b = this.bytes[i];
      out.push(new Uint8Array(b.buffer, b.byteOffset + this.offsets[i], this.lengths[i]));
    }
    return out;
  }
}

/**
 * A validated descriptor chain (§2.7.4.2, §2.8.6): every segment lies inside guest memory, the
 * device-readable part precedes the device-writable part, and the lengths do not overflow.
 * The buffers are guest memory itself, never copies.
 *
 * A chain pop() returns is the queue's record of that chain id, with its segments: the queue
 * refills the same object when the id is popped again, once the chain went back (see
 * DeviceQueue.pop). Read-only for everyone else.
 */
export class DescriptorChain {
  private segs: ChainSegments;
  /** The views `readable` and `writable` handed out for the current contents, made on first request. */
  private readableViews: Uint8Array[] | undefined;
  private writableViews: Uint8Array[] | undefined;

  /** A chain over buffers given as views (devices' own chains, tests); queues refill their records instead. */
  constructor(
    /** Split: the head descriptor index. Packed: the buffer id. Either way, what goes into the used element. */
    private chainId: number,
    /** Descriptors the chain occupied in the ring (packed rings advance by this many; indirect counts as one). */
    private ringSlots: number,
    readable: readonly Uint8Array[],
    writable: readonly Uint8Array[],
    private readableBytes: number,
    private writableBytes: number,
  ) {
    const segs = new ChainSegments();
    for (const b of readable) segs.put(b, 0, b.length);
    segs.readableCount = segs.count;
    for (const b of writable) segs.put(b, 0, b.length);
    this.segs = segs;
    this.readableViews = [...readable];
    this.writableViews = [...writable];
  }

  get id(): number {
    return this.chainId;
  }

  get ringDescriptors(): number {
    return this.ringSlots;
  }

  get readableLength(): number {
    return this.readableBytes;
  }

  get writableLength(): number {
    return this.writableBytes;
  }

  /** The segments as spans, for ChainReader and ChainWriter. */
  get segments(): ChainSegments {
    return this.segs;
  }

  /**
   * Zero-copy views of the device-readable buffers, one per descriptor. Made on the first
   * request after each pop (the hot paths read through ChainReader and make none), the same
   * views for every request until the chain is refilled.
   */
  get readable(): readonly Uint8Array[] {
    return (this.readableViews ??= this.segs.views(0, this.segs.readableCount));
  }

  /** Zero-copy views of the device-writable buffers, as `readable`. */
  get writable(): readonly Uint8Array[] {
    return (this.writableViews ??= this.segs.views(this.segs.readableCount, this.segs.count));
  }

  /**
   * Refill this record with another chain (ChainBuilder, once it knows the id is not in flight):
   * it takes `segs` and returns the segments it held, which the builder fills next.
   */
  refill(
    id: number,
    ringDescriptors: number,
    segs: ChainSegments,
    readableLength: number,
    writableLength: number,
  ): ChainSegments {
    const old = this.segs;
    this.segs = segs;
    this.chainId = id;
    this.ringSlots = ringDescriptors;
    this.readableBytes = readableLength;
    this.writableBytes = writableLength;
    this.readableViews = undefined;
    this.writableViews = undefined;
    return old;
  }

  /**
   * Refill this record in place with a chain of one descriptor (ChainBuilder.single, once it knows
   * the id is not in flight and the span lies in guest memory): `length` bytes at `offset` of
   * `bytes`, device-writable or device-readable, views from `cache`.
   */
  refillOne(id: number, cache: ViewCache, bytes: Uint8Array, offset: number, length: number, deviceWritable: boolean): void {
    const segs = this.segs;
    if (segs.cache !== cache) segs.cache = cache;
    segs.setOne(bytes, offset, length, deviceWritable ? 0 : 1);
    this.chainId = id;
    this.ringSlots = 1;
    this.readableBytes = deviceWritable ? 0 : length;
    this.writableBytes = deviceWritable ? length : 0;
    this.readableViews = undefined;
    this.writableViews = undefined;
  }
}

/**
 * What DeviceQueue.drainSpans hands a chain that is one device-readable descriptor and nothing
 * else: its `length` bytes at `offset` of `bytes`, the bytes of the guest memory region holding
 * them, checked as every descriptor is (ChainBuilder). Read them before returning and keep none
 * of them. Returns whether the queue is still the device's to use: false once the device was
 * reset or the queue failed meanwhile, and the queue then touches the ring no more. Must not
 * throw: a thrown error would leave the chain in flight.
 */
export type SpanVisitor = (bytes: Uint8Array, offset: number, length: number) => boolean;

/** Device side of one virtqueue. */
export interface DeviceQueue {
  readonly size: number;
  /**
   * The next chain the driver made available, or null when there is none.
   * Throws VirtqueueError when the driver broke a rule; the queue is then unusable until reset.
   *
   * The chain, its segments and any views made of them stay valid and unchanged while the chain is in
   * flight, that is until push() or unpop() (unresubmit()) gives it back, however many other
   * chains are popped and pushed meanwhile. After that the queue may return the same object,
   * refilled, from a later pop(): a device reads nothing of a chain after giving it back.
   */
  pop(): DescriptorChain | null;
  /**
   * Serve, one after the other, up to `max` available chains while each is one device-readable
   * descriptor (no NEXT, WRITE or INDIRECT flag): check it exactly as pop() would, hand its bytes
   * to `visit`, then return it used with nothing written, as push(chain, 0). Stops before any
   * other chain, leaving it for pop(), and after a visit that returned false. Returns the chains
   * visited. A driver that broke a ring rule makes it throw VirtqueueError as pop() does. The
   * common transmit buffer (header and frame in one descriptor, as DPDK and Linux send them)
   * then costs no DescriptorChain record and no reader. Optional: a queue without it (or one
   * that returns 0) is served through pop() alone.
   */
  drainSpans?(visit: SpanVisitor, max: number): number;
  /**
   * Return a chain, `written` bytes of its writable part filled. Visible to the driver after
   * publish(). The chain is the queue's again: read what is needed of it (e.g. its lengths) before.
   */
  push(chain: DescriptorChain, written: number): void;
  /**
   * Make every pushed chain visible to the driver, with the memory ordering of §2.7.13 / §2.8.21,
   * and say whether the driver asked to be notified (§2.7.10 / §2.8.10 event suppression).
   */
  publish(): boolean;
  /**
   * Ask the driver to notify on new buffers. Returns true when buffers arrived before the request
   * became visible, so the caller must pop again instead of sleeping (the race of §2.7.10).
   */
  enableNotifications(): boolean;
  /** Tell the driver not to notify (a busy device polls instead). */
  disableNotifications(): void;
  /**
   * Ring position for save/restore, encoded as vhost-user's VRING_BASE: split, the 16-bit index of
   * the next available entry to pop; packed, that index | avail wrap counter << 15 | used index << 16
   * | used wrap counter << 31. A queue constructed with a base resumes from it.
   */
  readonly base: number;
  /** Chains popped and not yet pushed (in flight), for reset and reconnect bookkeeping. */
  readonly inFlight: number;
  /**
   * Give back unused a chain pop() returned, as if it had never been popped: it is no longer in
   * flight and the available position moves back over it (a packed ring's wrap counter with it,
   * §2.8.1), so the next pop(), or whoever resumes from `base`, takes it again. QEMU's
   * virtqueue_unpop. Only the newest chain popped and not given back yet may be given back (so
   * several go back newest first), before any chain popped after it was pushed: a packed ring
   * writes used descriptors over the slots of chains in flight (§2.8.8), never over those of
   * chains popped after every pushed one. With IN_ORDER (§2.7.9, §2.8.20) a chain is then never
   * pushed out of order.
   */
  unpop(chain: DescriptorChain): void;
}

/** One descriptor as the driver wrote it in the ring (§2.8.13 struct pvirtq_desc; a split ring's id is unused). */
export interface RingDescriptor {
  readonly addr: number;
  readonly len: number;
  readonly id: number;
  readonly flags: number;
}

/**
 * A chain as a record kept outside the ring names it: split rings by the head, whose descriptors
 * stay in the table until the chain is used; packed rings by copies of its ring descriptors, since
 * used descriptors are written over the ring slots of chains still in flight (§2.8.8).
 */
export interface SavedChain {
  readonly id: number;
  readonly descriptors: readonly RingDescriptor[];
}

/**
 * A device queue that can hand out again a chain an earlier incarnation of the device popped and
 * never returned: a vhost-user back-end restarted after a crash learns such chains from its
 * inflight region ("Inflight I/O tracking" in vhost-user.rst) and serves them before new ones.
 */
export interface ResubmittingQueue extends DeviceQueue {
  /** Whether saving a chain needs copies of its descriptors (packed), or its head is enough (split). */
  readonly savesDescriptors: boolean;
  /** Copies of the ring descriptors of `chain`, which pop() returned just now (before any publish()). */
  poppedDescriptors(chain: DescriptorChain): RingDescriptor[];
  /**
   * The chain `saved` names, walked and validated exactly like pop() and then in flight like a
   * popped chain, without moving the ring's available position: it was consumed before the
   * restart, and the position the queue was built with already counts it. Throws VirtqueueError
   * for an id out of range or already in flight, or a chain that breaks a ring rule.
   */
  resubmit(saved: SavedChain): DescriptorChain;
  /**
   * Give back unused a chain resubmit() returned, newest first as with unpop(): no longer in
   * flight, while the available position stays past it, as it was consumed before the restart
   * (the record that named it still owes it).
   */
  unresubmit(chain: DescriptorChain): void;
}

/**
 * One buffer the device returned to the driver. `len` is device-claimed and not yet trusted.
 * getUsed() fills the same object each time: read it before the next call.
 */
export interface UsedBuffer<T> {
  readonly token: T;
  readonly len: number;
}

/** The UsedBuffer a driver queue's getUsed() fills and returns, one per queue: a plain object, as a result should look. */
export type UsedRecord<T> = { -readonly [K in keyof UsedBuffer<T>]: UsedBuffer<T>[K] };

/**
 * DriverQueue.takeUsed() as getUsed() after getUsed(), for a ring with no faster way (and the
 * first buffer of a run for one that has).
 */
export function takeUsedEach<T>(queue: DriverQueue<T>, tokens: (T | undefined)[], lens: Float64Array, max: number): number {
  let n = 0;
  try {
    for (; n < max; n++) {
      const used = queue.getUsed();
      if (used === null) break;
      tokens[n] = used.token;
      lens[n] = used.len;
    }
  } catch (err) {
    // The fault stays where it is: the next call, with nothing taken before it, raises it.
    if (n === 0) throw err;
  }
  return n;
}

/** Driver side of one virtqueue. */
export interface DriverQueue<T> {
  readonly size: number;
  /** Descriptors not in use by the device. */
  readonly freeDescriptors: number;
  /**
   * Expose a buffer: `out` segments device-readable, then `inSegs` device-writable. Returns false
   * (and changes nothing) when the ring has no room. The token comes back with the used buffer.
   */
  add(out: readonly Segment[], inSegs: readonly Segment[], token: T): boolean;
  /**
   * add() of a buffer of one segment given as its guest address and length, device-writable when
   * `write`: the same checks and result. For a caller that keeps its buffers' addresses as
   * numbers (a net driver's transmit buffers), so that no Segment is read per buffer.
   */
  addSegment(addr: number, len: number, write: boolean, token: T): boolean;
  /**
   * Make added buffers visible to the device (§2.7.13 / §2.8.21), and say whether the device
   * asked to be notified (event suppression).
   */
  kick(): boolean;
  /**
   * The next buffer the device used, or null. The result is the queue's one UsedBuffer, valid
   * until the next getUsed() (no allocation per buffer): copy out token and len, do not keep it.
   */
  getUsed(): UsedBuffer<T> | null;
  /**
   * getUsed() for up to `max` buffers at once: their tokens and lengths go to tokens[0..n) and
   * lens[0..n), and n is returned. A ring fault behind buffers already taken ends the call with
   * those; the next call raises it, as a fault changes nothing.
   */
  takeUsed(tokens: (T | undefined)[], lens: Float64Array, max: number): number;
  /** Ask the device to interrupt on used buffers; returns true if used buffers are already pending. */
  enableInterrupts(): boolean;
  disableInterrupts(): void;
}
