/**
 * The driver side of a split virtqueue (§2.7): places buffers in the descriptor table, exposes
 * them through the available ring, and collects them from the used ring.
 *
 * The driver owns the ring memory, but the device writes the used ring, so everything read from
 * it is checked against driver-private state (which the device cannot reach): a used element
 * naming a buffer not in flight, or a used index running ahead of what was made available,
 * throws VirtqueueError and leaves the driver's bookkeeping intact.
 */
import { DESC_SIZE, DescFlag, MAX_QUEUE_SIZE } from '../constants.ts';
import type { GuestMemory } from '../memory.ts';
import { type UsedRecord, VirtqueueError, type DriverQueue, type QueueConfig, type Segment, type UsedBuffer, takeUsedEach } from '../queue.ts';
import {
  AVAIL_F_NO_INTERRUPT,
  AVAIL_RING,
  RING_FLAGS,
  RING_IDX,
  USED_F_NO_NOTIFY,
  availUsedEvent,
  mapSplitRing,
  needEvent,
  usedAvailEvent,
} from './layout.ts';

const TWO_32 = 0x1_0000_0000;
const U32_MAX = 0xffff_ffff;

/** Where a driver keeps indirect descriptor tables (§2.7.5.3): one table per ring descriptor. */
export interface IndirectTables {
  /** Guest address of the area, a multiple of 16, indirectTablesBytes(size, maxSegments) long. */
  readonly addr: number;
  /** Entries per table: buffers with more segments than this (or than the queue size) use direct chains. */
  readonly maxSegments: number;
}

export interface SplitDriverOptions {
  /** Used when VIRTIO_F_INDIRECT_DESC is negotiated; without it every buffer is a direct chain. */
  readonly indirectTables?: IndirectTables;
}

/**
 * Bytes of the indirect table area for a ring of `size` entries. A buffer placed indirectly takes
 * exactly one ring descriptor, so the table of the buffer headed by descriptor h is table h and
 * never needs allocating or freeing.
 */
export function indirectTablesBytes(size: number, maxSegments: number): number {
  return size * maxSegments * DESC_SIZE;
}

/**
 * One split virtqueue as the driver sees it; `T` is what the caller gets back with each used
 * buffer. Like the device side, one thread uses it while the device may run anywhere.
 */
export class SplitDriverQueue<T> implements DriverQueue<T> {
  readonly size: number;
  private readonly mask: number;
  private readonly desc: Uint32Array;
  private readonly avail: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly usedEventAt: number;
  private readonly availEventAt: number;
  private readonly eventIdx: boolean;
  private readonly inOrder: boolean;
  /**
   * The indirect table area as 32-bit words, its guest address, the words from one table to the
   * next, and the most segments a table takes (0 when tables are not used).
   */
  private readonly indirect32: Uint32Array;
  private readonly indirectAddr: number;
  private readonly tableStride: number;
  private readonly maxIndirect: number;
  /**
   * Free descriptors, as a FIFO list linked through nextFree (driver-private, so a device
   * scribbling on the table cannot corrupt it). Taking from the head and returning whole chains
   * at the tail keeps the list in ring order when buffers come back in order, which is the
   * allocation IN_ORDER requires (§2.7.5).
   */
  private readonly nextFree: Uint16Array;
  private freeHead = 0;
  private freeTail: number;
  private freeCount: number;
  /** Per head: ring descriptors the buffer holds (0 when not in flight), its last descriptor, token, writable bytes. */
  private readonly chainDescs: Uint16Array;
  private readonly chainTail: Uint16Array;
  private readonly tokens: (T | undefined)[];
  private readonly writableBytes: Float64Array;
  /** Head of each available ring entry, by index: an IN_ORDER used element names the last of a batch. */
  private readonly availHeads: Uint16Array;
  /** Next available ring index to fill, and avail->idx as the device can see it. */
  private availIdx = 0;
  private publishedAvail = 0;
  /** Next used ring index to collect, and used->idx as last read. */
  private lastUsed = 0;
  private shadowUsed = 0;
  /** IN_ORDER: buffers still to hand out from the batch the last used element returned, and its len. */
  private batchRemaining = 0;
  private batchLen = 0;
  /** What getUsed() returns, refilled each call. */
  private readonly used: UsedRecord<T> = { token: undefined as T, len: 0 };

  /**
   * The caller allocated the three areas at the config's addresses (see splitRingLayout); the
   * driver initialises the rings, so construct it before the device reads them.
   */
  constructor(
    memory: GuestMemory,
    config: QueueConfig,
    private readonly name: string,
    options: SplitDriverOptions = {},
  ) {
    const views = mapSplitRing(memory, config, name);
    const size = config.size;
    this.size = size;
    this.mask = size - 1;
    this.desc = views.desc;
    this.avail = views.avail;
    this.used16 = views.used16;
    this.used32 = views.used32;
    this.usedEventAt = availUsedEvent(size);
    this.availEventAt = usedAvailEvent(size);
    this.eventIdx = config.eventIdx;
    this.inOrder = config.inOrder;
    const tables = config.indirect ? options.indirectTables : undefined;
    if (tables === undefined) {
      this.indirect32 = new Uint32Array(0);
      this.indirectAddr = 0;
      this.tableStride = 0;
      this.maxIndirect = 0;
    } else {
      this.indirect32 = mapIndirectTables(memory, tables, size, name);
      this.indirectAddr = tables.addr;
      this.tableStride = tables.maxSegments * 4;
      // A chain, indirect or not, holds at most the queue size of descriptors (§2.7.5.3.1).
      this.maxIndirect = Math.min(tables.maxSegments, size);
    }
    this.nextFree = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.nextFree[i] = (i + 1) & this.mask;
    this.freeTail = size - 1;
    this.freeCount = size;
    this.chainDescs = new Uint16Array(size);
    this.chainTail = new Uint16Array(size);
    this.tokens = new Array<T | undefined>(size).fill(undefined);
    this.writableBytes = new Float64Array(size);
    this.availHeads = new Uint16Array(size);
    // §2.7.10.1: the used ring's flags start at 0; both rings start with idx 0.
    this.avail.fill(0);
    this.used16.fill(0);
  }

  get freeDescriptors(): number {
    return this.freeCount;
  }

  add(out: readonly Segment[], inSegs: readonly Segment[], token: T): boolean {
    // One segment, the common case, is one small method and the rest another, so that add() is
    // small enough for V8 to inline where it is called.
    if (out.length + inSegs.length === 1) {
      const write = out.length === 0;
      const seg = write ? inSegs[0] : out[0];
      return this.addSegment(seg.addr, seg.len, write, token);
    }
    return this.addChain(out, inSegs, token);
  }

  /** add() of a buffer of several segments (or none, an error): a chain, direct or indirect. */
  private addChain(out: readonly Segment[], inSegs: readonly Segment[], token: T): boolean {
    const readable = out.length;
    const n = readable + inSegs.length;
    if (n === 0) throw new RangeError(`${this.name}: a buffer needs at least one segment`);
    const indirect = n > 1 && n <= this.maxIndirect;
    const needed = indirect ? 1 : n;
    if (needed > this.size) {
      throw new RangeError(`${this.name}: ${n} segments do not fit in a ring of ${this.size} descriptors`);
    }
    if (this.freeCount < needed) return false;
    const head = this.freeHead;
    // Direct chains follow the free list through the ring's table; an indirect table is filled
    // from its entry 0 with sequential next fields (§2.7.5.3).
    const table = indirect ? this.indirect32 : this.desc;
    const tableBase = indirect ? head * this.tableStride : 0;
    let i = indirect ? 0 : head;
    let writable = 0;
    for (let s = 0; s < n; s++) {
      const seg = s < readable ? out[s] : inSegs[s - readable];
      const addr = seg.addr;
      const len = seg.len;
      this.checkSegment(s, addr, len);
      let flags = s < readable ? 0 : DescFlag.WRITE;
      if (s >= readable) writable += len;
      const next = indirect ? s + 1 : this.nextFree[i];
      if (s < n - 1) flags |= DescFlag.NEXT | (next << 16);
      writeDescriptor(table, tableBase + (i << 2), addr, len, flags);
      if (s < n - 1) i = next;
    }
    let tail = head;
    if (indirect) {
      writeDescriptor(this.desc, head << 2, this.indirectAddr + tableBase * 4, n * DESC_SIZE, DescFlag.INDIRECT);
    } else {
      tail = i;
    }
    this.expose(head, tail, needed, token, writable);
    return true;
  }

  /**
   * A buffer of one segment, the common case: one direct descriptor at the head of the free list
   * (a single segment is never placed indirectly).
   */
  addSegment(addr: number, len: number, write: boolean, token: T): boolean {
    if (this.freeCount === 0) return false;
    this.checkSegment(0, addr, len);
    const head = this.freeHead;
    writeDescriptor(this.desc, head << 2, addr, len, write ? DescFlag.WRITE : 0);
    this.expose(head, head, 1, token, write ? len : 0);
    return true;
  }

  /** A driver's own segment `s` is a 64-bit guest address and a 32-bit length, or a RangeError. */
  private checkSegment(s: number, addr: number, len: number): void {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isInteger(len) || len < 0 || len > U32_MAX) {
      throw badSegment(this.name, s, addr, len);
    }
  }

  /**
   * Take the chain of `descs` ring descriptors from `head` to `tail` off the free list, record
   * it in flight with its token and writable bytes, and put its head in the next available entry.
   */
  private expose(head: number, tail: number, descs: number, token: T, writable: number): void {
    this.freeHead = this.nextFree[tail];
    this.freeCount -= descs;
    this.chainDescs[head] = descs;
    this.chainTail[head] = tail;
    this.tokens[head] = token;
    this.writableBytes[head] = writable;
    const slot = this.availIdx & this.mask;
    // Unchanged when buffers come back in order and go out again in the same order (a transmit
    // ring reusing its buffers): the line then stays shared with the device (see writeDescriptor).
    if (this.avail[AVAIL_RING + slot] !== head) this.avail[AVAIL_RING + slot] = head;
    this.availHeads[slot] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  kick(): boolean {
    const old = this.publishedAvail;
    const now = this.availIdx;
    if (now === old) return false;
    // Release: descriptors and ring entries are written before idx (§2.7.13.3.1). Atomics are
    // sequentially consistent, so this store and the load below are also the full fence
    // §2.7.13.4.1 requires before reading the device's suppression fields.
    Atomics.store(this.avail, RING_IDX, now);
    this.publishedAvail = now;
    if (this.eventIdx) return needEvent(Atomics.load(this.used16, this.availEventAt), now, old);
    return (Atomics.load(this.used16, RING_FLAGS) & USED_F_NO_NOTIFY) === 0;
  }

  getUsed(): UsedBuffer<T> | null {
    if (this.inOrder) return this.getUsedInOrder();
    const last = this.lastUsed;
    if (last === this.shadowUsed && !this.refreshUsed(last)) return null;
    const e = 1 + ((last & this.mask) << 1);
    const id = this.used32[e];
    if (id >= this.size || this.chainDescs[id] === 0) throw usedNotInFlight(this.name, id);
    return this.giveBack(id, this.used32[e + 1]);
  }

  takeUsed(tokens: (T | undefined)[], lens: Float64Array, max: number): number {
    return takeUsedEach(this, tokens, lens, max);
  }

  /** getUsed() with IN_ORDER, where one used element may return a batch of buffers (§2.7.9). */
  private getUsedInOrder(): UsedBuffer<T> | null {
    const last = this.lastUsed;
    const head = this.availHeads[last & this.mask];
    let len: number;
    if (this.batchRemaining > 0) {
      // §2.7.9: buffers a batch skipped were used completely; the last one has the element's len.
      len = --this.batchRemaining === 0 ? this.batchLen : this.writableBytes[head];
    } else {
      if (last === this.shadowUsed && !this.refreshUsed(last)) return null;
      const e = 1 + ((last & this.mask) << 1);
      const batch = this.batchEndingAt(this.used32[e]);
      len = this.used32[e + 1];
      if (batch > 1) {
        this.batchRemaining = batch - 1;
        this.batchLen = len;
        len = this.writableBytes[head];
      }
    }
    return this.giveBack(head, len);
  }

  /** Hand buffer `head` back to the caller, used with `len` bytes, and move past its used entry. */
  private giveBack(head: number, len: number): UsedBuffer<T> {
    const token = this.tokens[head] as T;
    this.release(head);
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    const used = this.used;
    used.token = token;
    used.len = len;
    return used;
  }

  /**
   * Read used->idx again, the next element to collect being `last`: whether elements are there
   * now, checking the index against what is in flight. Acquire: the elements behind idx are read
   * after it.
   */
  private refreshUsed(last: number): boolean {
    const idx = Atomics.load(this.used16, RING_IDX);
    if (idx === last) return false;
    const outstanding = (this.publishedAvail - last) & 0xffff;
    if (((idx - last) & 0xffff) > outstanding) {
      throw new VirtqueueError(
        'used index jump',
        `${this.name}: used idx went from ${last} to ${idx}, with only ${outstanding} buffers available`,
      );
    }
    this.shadowUsed = idx;
    return true;
  }

  /**
   * IN_ORDER (§2.7.9): the element at the next used index names the last buffer of a batch that
   * starts with the oldest buffer in flight. Returns how many buffers the batch holds.
   */
  private batchEndingAt(id: number): number {
    const last = this.lastUsed;
    const published = (this.shadowUsed - last) & 0xffff;
    for (let k = 0; k < published; k++) {
      if (this.availHeads[(last + k) & this.mask] === id) return k + 1;
    }
    throw new VirtqueueError(
      'used id out of order',
      `${this.name}: used element names descriptor ${id}, not one of the next ${published} buffers in order`,
    );
  }

  /** Return a buffer's descriptors to the tail of the free list. */
  private release(head: number): void {
    if (this.freeCount === 0) this.freeHead = head;
    else this.nextFree[this.freeTail] = head;
    this.freeTail = this.chainTail[head];
    this.freeCount += this.chainDescs[head];
    this.chainDescs[head] = 0;
    this.tokens[head] = undefined;
  }

  /** The tokens of the buffers in flight, for a driver failing them all (a reset or a broken ring). */
  tokensInFlight(): T[] {
    const all: T[] = [];
    for (let head = 0; head < this.size; head++) if (this.chainDescs[head] !== 0) all.push(this.tokens[head] as T);
    return all;
  }

  enableInterrupts(): boolean {
    // §2.7.7: ask for a notification when the device fills the next used entry to collect.
    if (this.eventIdx) Atomics.store(this.avail, this.usedEventAt, this.lastUsed);
    else Atomics.store(this.avail, RING_FLAGS, 0);
    // Sequentially consistent store then load: a buffer used before the device could see the
    // request is found here rather than lost.
    return this.batchRemaining > 0 || Atomics.load(this.used16, RING_IDX) !== this.lastUsed;
  }

  disableInterrupts(): void {
    // With EVENT_IDX flags must stay 0 (§2.7.7); a used_event one behind the next entry to
    // collect is only reached after 65535 more buffers, more than can be in flight.
    if (this.eventIdx) this.avail[this.usedEventAt] = (this.lastUsed - 1) & 0xffff;
    else this.avail[RING_FLAGS] = AVAIL_F_NO_INTERRUPT;
  }
}

// Errors of the per-buffer paths are made out of line: a template string costs bytecode, and
// V8 inlines a method into its caller only while the caller's inlined bytecode stays small.

function badSegment(name: string, s: number, addr: number, len: number): RangeError {
  return new RangeError(`${name}: segment ${s} (${len} bytes at ${addr}) is not a 64-bit address and 32-bit length`);
}

function usedNotInFlight(name: string, id: number): VirtqueueError {
  return new VirtqueueError('used id not in flight', `${name}: used element names descriptor ${id}`);
}

/**
 * Write one descriptor (§2.7.5) at word `w` of a table; `flagsNext` is flags | next << 16. Only
 * the words that change are stored: a driver that reuses its buffers in ring order (each
 * transmit buffer on the same descriptor every time round, as DPDK's in-order path keeps them)
 * rewrites the same address and flags, and a store to a line the device has read takes it back
 * from the device's cache, which the device then misses on. The device only reads the table, so
 * what is read here is what the driver last wrote (a device scribbling on it gains nothing: the
 * comparison stores the driver's value whenever the word differs).
 */
function writeDescriptor(table: Uint32Array, w: number, addr: number, len: number, flagsNext: number): void {
  const low = addr >>> 0;
  const high = (addr / TWO_32) >>> 0;
  if (table[w] !== low) table[w] = low;
  if (table[w + 1] !== high) table[w + 1] = high;
  if (table[w + 2] !== len) table[w + 2] = len;
  if (table[w + 3] !== flagsNext) table[w + 3] = flagsNext;
}

function mapIndirectTables(memory: GuestMemory, tables: IndirectTables, size: number, name: string): Uint32Array {
  const { addr, maxSegments } = tables;
  if (!Number.isInteger(maxSegments) || maxSegments < 2 || maxSegments > MAX_QUEUE_SIZE) {
    throw new RangeError(`${name}: indirect tables of ${maxSegments} entries; 2 to ${MAX_QUEUE_SIZE} are useful`);
  }
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % DESC_SIZE !== 0) {
    throw new RangeError(`${name}: indirect table area at ${addr} is not a multiple of ${DESC_SIZE}`);
  }
  const bytes = memory.trySlice(addr, indirectTablesBytes(size, maxSegments));
  if (bytes === undefined || bytes.byteOffset % 4 !== 0) {
    throw new RangeError(
      `${name}: indirect table area (${indirectTablesBytes(size, maxSegments)} bytes at 0x${addr.toString(16)}) is not inside one guest memory region`,
    );
  }
  return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
}
