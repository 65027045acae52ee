/**
 * Driver side of a packed virtqueue (§2.8): writes buffers into the descriptor ring, collects the
 * used descriptors the device writes back, and decides on available buffer notifications.
 *
 * Buffers added between two kick() calls form a batch whose first descriptor is made available
 * last, at kick() (§2.8.21), so the device sees the batch whole. The device is not trusted: a
 * used descriptor with malformed flags, an unknown buffer id or a length beyond the buffer is a
 * VirtqueueError, raised before any state changes, so no token is ever returned twice.
 */
import { DESC_SIZE, DescFlag } from '../constants.ts';
import type { GuestMemory } from '../memory.ts';
import { type IndirectTables, indirectTablesBytes } from '../split-ring.ts';
import { type DriverQueue, type QueueConfig, type Segment, type UsedBuffer, type UsedRecord, VirtqueueError } from '../queue.ts';
import {
  AVAIL_USED as AVAIL_USEDBinding,
  PLAIN_READ_ACQUIRES as PLAIN_READ_ACQUIRESBinding,
  RingEventFlags,
  availablePattern as availablePatternBinding,
  eventWord,
  extendedIndex,
  hex,
  mapPackedRing,
  needsNotification,
  offWrap,
  usedPattern as usedPatternBinding,
} from './ring.ts';

// Per-chain paths use module-level copies of imported bindings and flag values: under a
// transpiling loader (tsx) each use of an import can be a getter call, which showed in profiles.
const { NEXT, WRITE, INDIRECT } = DescFlag;
const AVAIL_USED = AVAIL_USEDBinding;
const availablePattern = availablePatternBinding;
const usedPattern = usedPatternBinding;
const PLAIN_READ_ACQUIRES = PLAIN_READ_ACQUIRESBinding;
const U32_MAX = 0xffff_ffff;

export interface PackedDriverOptions {
  /**
   * Used when VIRTIO_F_INDIRECT_DESC is negotiated; without it every buffer is a direct chain.
   * The split ring's shape: the table of buffer id i lies at addr + i * maxSegments * 16, so
   * tables are never allocated or freed.
   */
  readonly indirectTables?: IndirectTables;
}

export class PackedDriverQueue<T> implements DriverQueue<T> {
  readonly size: number;
  private readonly words: Uint32Array;
  private readonly halves: Uint16Array;
  private readonly driverEvent: Uint32Array;
  private readonly deviceEvent: Uint32Array;
  private readonly eventIdx: boolean;
  /** Indirect table area as 32-bit words (empty without indirect descriptors) and its guest address. */
  private readonly tables: Uint32Array;
  private readonly tablesAddr: number;
  private readonly maxIndirect: number;
  private readonly inOrder: boolean;

  /** Next descriptor to make available. */
  private availPos = 0;
  private availWrap = true;
  /** Where the next used descriptor will appear. */
  private usedPos = 0;
  private usedWrap = true;
  /** Ring slots made available and not yet used. */
  private outstanding = 0;
  /** Extended avail index at the last kick, the "old" of the event suppression check. */
  private kicked: number;
  /** Slot of the batch's first descriptor and its flags, stored at kick(); -1 when no batch is open. */
  private batchHead = -1;
  private batchHeadFlags = 0;

  /**
   * Free buffer ids, a stack (never empty while a ring slot is free); unused with IN_ORDER,
   * where a buffer's id is its head's slot.
   */
  private readonly freeIds: Uint16Array;
  private freeCount: number;
  /**
   * Per buffer id, the batch it was added in, 0 while the id is free. A buffer of `openBatch` is
   * not kicked yet, invisible to the device; kick() closes a batch by moving `openBatch` on, so
   * no id is written twice per add.
   */
  private readonly batchOf: Float64Array;
  /** The batch add() puts buffers into; batches count from 1 (a double: no wrap in practice). */
  private openBatch = 1;
  private readonly tokens: (T | undefined)[];
  private readonly slotsOf: Uint16Array;
  private readonly writableOf: Float64Array;
  /** With IN_ORDER: the last id and length of a used batch still being handed out, or -1. */
  private batchEndId = -1;
  private batchEndLen = 0;
  /** What getUsed() returns, refilled each call. */
  private readonly used: UsedRecord<T> = { token: undefined as T, len: 0 };

  constructor(
    memory: GuestMemory,
    config: QueueConfig,
    private readonly name: string,
    options: PackedDriverOptions = {},
  ) {
    const views = mapPackedRing(memory, config, name);
    const size = config.size;
    this.size = size;
    this.words = views.words;
    this.halves = views.halves;
    this.driverEvent = views.driverEvent;
    this.deviceEvent = views.deviceEvent;
    this.eventIdx = config.eventIdx;
    const tables = config.indirect ? options.indirectTables : undefined;
    this.tables = tables === undefined ? new Uint32Array(0) : mapIndirectTables(memory, tables, size, name);
    this.tablesAddr = tables?.addr ?? 0;
    this.maxIndirect = tables?.maxSegments ?? 0;
    this.inOrder = config.inOrder;
    this.kicked = extendedIndex(0, true, size);
    this.freeIds = new Uint16Array(size);
    // Hand out low ids first (a stack popped from the end).
    for (let i = 0; i < size; i++) this.freeIds[i] = size - 1 - i;
    this.freeCount = size;
    this.batchOf = new Float64Array(size);
    this.tokens = new Array<T | undefined>(size).fill(undefined);
    this.slotsOf = new Uint16Array(size);
    this.writableOf = new Float64Array(size);
  }

  get freeDescriptors(): number {
    return this.size - this.outstanding;
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

  /** add() of a buffer of several segments (or none, an error): a list of descriptors, or one indirect. */
  private addChain(out: readonly Segment[], inSegs: readonly Segment[], token: T): boolean {
    const count = out.length + inSegs.length;
    if (count === 0 || count > this.size) {
      throw new RangeError(`${this.name}: a buffer has 1..${this.size} segments, not ${count}`);
    }
    let readable = 0;
    let writable = 0;
    for (let i = 0; i < out.length; i++) readable += checkSegment(this.name, out[i].addr, out[i].len);
    for (let i = 0; i < inSegs.length; i++) writable += checkSegment(this.name, inSegs[i].addr, inSegs[i].len);
    if (readable > U32_MAX || writable > U32_MAX) {
      // The device would refuse the chain (a used length is 32 bits): refuse it here instead.
      throw new RangeError(`${this.name}: a buffer's readable or writable part exceeds 4 GiB`);
    }
    const indirect = count > 1 && count <= this.maxIndirect;
    const slots = indirect ? 1 : count;
    if (slots > this.size - this.outstanding) return false;

    const id = this.takeId(token, writable, slots);
    const head = this.availPos;
    const headFlags = indirect ? this.writeIndirect(out, inSegs, count, id) : this.writeChain(out, inSegs, count, id);
    this.makeAvailable(head, headFlags);
    return true;
  }

  /**
   * A buffer of one segment, the common case: one ring descriptor (a single segment is never
   * placed indirectly), with add()'s checks in the same order.
   */
  addSegment(addr: number, len: number, write: boolean, token: T): boolean {
    checkSegment(this.name, addr, len);
    if (this.outstanding === this.size) return false;
    const id = this.takeId(token, write ? len : 0, 1);
    const pos = this.availPos;
    putDescriptor(this.words, this.halves, pos, addr, len, id);
    const flags = availablePattern(this.availWrap) | (write ? WRITE : 0);
    if (pos + 1 === this.size) {
      this.availPos = 0;
      this.availWrap = !this.availWrap;
    } else {
      this.availPos = pos + 1;
    }
    this.makeAvailable(pos, flags);
    return true;
  }

  /**
   * A free buffer id, now in flight with `token`, `writable` bytes and `slots` ring slots in the
   * open batch. With IN_ORDER the id is the slot of the buffer's head, as DPDK's in-order path
   * numbers them: buffers come back in ring order (§2.8.8), so the oldest in flight is always
   * the one whose head is at usedPos, and no list of ids in order is needed.
   */
  private takeId(token: T, writable: number, slots: number): number {
    const id = this.inOrder ? this.availPos : this.freeIds[--this.freeCount];
    this.batchOf[id] = this.openBatch;
    this.tokens[id] = token;
    this.writableOf[id] = writable;
    this.slotsOf[id] = slots;
    this.outstanding += slots;
    return id;
  }

  /** §2.8.6: the head at `head` is made available after the rest of its buffer; a batch's first head waits for kick(). */
  private makeAvailable(head: number, headFlags: number): void {
    if (this.batchHead === -1) {
      this.batchHead = head;
      this.batchHeadFlags = headFlags;
    } else {
      this.halves[head * 8 + 7] = headFlags;
    }
  }

  /** Write a buffer's segments as a NEXT-linked list of ring descriptors; returns the head's flags, not yet stored. */
  private writeChain(out: readonly Segment[], inSegs: readonly Segment[], count: number, id: number): number {
    const halves = this.halves;
    const nOut = out.length;
    let pos = this.availPos;
    let wrap = this.availWrap;
    let headFlags = 0;
    for (let i = 0; i < count; i++) {
      const write = i >= nOut;
      const s = write ? inSegs[i - nOut] : out[i];
      putDescriptor(this.words, halves, pos, s.addr, s.len, id);
      const flags = availablePattern(wrap) | (write ? WRITE : 0) | (i + 1 < count ? NEXT : 0);
      if (i === 0) headFlags = flags;
      else halves[pos * 8 + 7] = flags;
      if (++pos === this.size) {
        pos = 0;
        wrap = !wrap;
      }
    }
    this.availPos = pos;
    this.availWrap = wrap;
    return headFlags;
  }

  /** Fill buffer `id`'s indirect table (§2.8.7) and the one ring descriptor pointing at it; returns that descriptor's flags. */
  private writeIndirect(out: readonly Segment[], inSegs: readonly Segment[], count: number, id: number): number {
    const tables = this.tables;
    const first = id * this.maxIndirect;
    for (let i = 0; i < count; i++) {
      const write = i >= out.length;
      const s = write ? inSegs[i - out.length] : out[i];
      const w = (first + i) * 4;
      tables[w] = s.addr >>> 0;
      tables[w + 1] = Math.floor(s.addr / 0x1_0000_0000);
      tables[w + 2] = s.len;
      // WRITE is the only flag a table entry carries; its id is reserved (§2.8.7).
      tables[w + 3] = write ? WRITE << 16 : 0;
    }
    const pos = this.availPos;
    putDescriptor(this.words, this.halves, pos, this.tablesAddr + first * DESC_SIZE, count * DESC_SIZE, id);
    const flags = availablePattern(this.availWrap) | INDIRECT;
    if (++this.availPos === this.size) {
      this.availPos = 0;
      this.availWrap = !this.availWrap;
    }
    return flags;
  }

  kick(): boolean {
    if (this.batchHead !== -1) {
      // Release: every descriptor of the batch is written before its first one becomes available.
      Atomics.store(this.halves, this.batchHead * 8 + 7, this.batchHeadFlags);
      this.batchHead = -1;
      this.openBatch++;
    }
    const now = extendedIndex(this.availPos, this.availWrap, this.size);
    const before = this.kicked;
    if (now === before) return false;
    this.kicked = now;
    // The store above and this load are sequentially consistent: the device's event word is read
    // after the new descriptors are visible (§2.8.21 "Sending Available Buffer Notifications").
    return needsNotification(Atomics.load(this.deviceEvent, 0), this.eventIdx, before, now, this.size);
  }

  getUsed(): UsedBuffer<T> | null {
    if (this.batchEndId !== -1) return this.retireOldest();
    const pos = this.usedPos;
    // Nothing in flight, or everything before a batch not yet kicked has come back.
    if (this.outstanding === 0 || pos === this.batchHead) return null;
    // Acquire: the used descriptor's id and len are read after its flags (a plain read showing it
    // used is that acquire where PLAIN_READ_ACQUIRES says so).
    let flags = this.halves[pos * 8 + 7];
    if (!PLAIN_READ_ACQUIRES || (flags & AVAIL_USED) !== usedPattern(this.usedWrap)) flags = Atomics.load(this.halves, pos * 8 + 7);
    const state = flags & AVAIL_USED;
    if (state !== usedPattern(this.usedWrap)) {
      // Still as the driver wrote it: not used yet. Anything else is the device's garbage.
      if (state === availablePattern(this.usedWrap)) return null;
      throw badUsedFlags(this.name, pos, flags);
    }
    const id = this.halves[pos * 8 + 6];
    // A free id, or a buffer not yet kicked, is one the device cannot have seen (§2.8.12: it
    // processes in ring order).
    const batch = id < this.size ? this.batchOf[id] : 0;
    if (batch === 0 || batch === this.openBatch) throw usedNotInFlight(this.name, id);
    // §2.8.3, §2.8.4: without WRITE the length is reserved. But QEMU never sets WRITE in a used
    // descriptor and always writes the length (Linux reads it regardless), so a length that fits
    // the buffer is taken; one that does not is the reserved value, read as 0.
    const raw = this.words[pos * 4 + 2];
    const writable = this.writableOf[id];
    const len = (flags & WRITE) !== 0 || raw <= writable ? raw : 0;
    if (len > writable) throw usedBeyondBuffer(this.name, id, len, writable);
    if (!this.inOrder) return this.retire(id, len);
    this.batchEndId = id;
    this.batchEndLen = len;
    return this.retireOldest();
  }

  takeUsed(tokens: (T | undefined)[], lens: Float64Array, max: number): number {
    let n = 0;
    while (n < max) {
      let used: UsedBuffer<T> | null;
      try {
        used = this.getUsed();
      } catch (err) {
        // A fault changes nothing: the next call, with nothing taken before it, raises it.
        if (n === 0) throw err;
        break;
      }
      if (used === null) break;
      tokens[n] = used.token;
      lens[n] = used.len;
      n++;
      if (this.batchEndId !== -1) n = this.retireRun(tokens, lens, n, max);
    }
    return n;
  }

  /**
   * IN_ORDER: the rest of the run of buffers getUsed() found (up to batchEndId), taken in one
   * pass into tokens/lens from index `n`, at most up to `max`: what retireOldest() would hand out
   * one call at a time, with the used position and count kept in locals for the pass (on a
   * transmit ring the device returns whole runs, and a call per buffer cost more than the buffer's
   * other bookkeeping). Returns the new count.
   */
  private retireRun(tokens: (T | undefined)[], lens: Float64Array, n: number, max: number): number {
    const size = this.size;
    const held = this.tokens;
    const end = this.batchEndId;
    let pos = this.usedPos;
    let wrap = this.usedWrap;
    let outstanding = this.outstanding;
    while (n < max) {
      // A buffer's id is its head's slot, and the run's buffers lie in ring order up to `end`.
      const id = pos;
      const slots = this.slotsOf[id];
      outstanding -= slots;
      pos += slots;
      if (pos >= size) {
        pos -= size;
        wrap = !wrap;
      }
      tokens[n] = held[id];
      held[id] = undefined;
      this.batchOf[id] = 0;
      if (id === end) {
        lens[n++] = this.batchEndLen;
        this.batchEndId = -1;
        break;
      }
      lens[n++] = this.writableOf[id];
    }
    this.usedPos = pos;
    this.usedWrap = wrap;
    this.outstanding = outstanding;
    return n;
  }

  /**
   * IN_ORDER (§2.8.8): the used descriptor of buffer batchEndId stands for every buffer made
   * available before it; those were used completely.
   */
  private retireOldest(): UsedBuffer<T> {
    const id = this.usedPos;
    if (id !== this.batchEndId) return this.retire(id, this.writableOf[id]);
    this.batchEndId = -1;
    return this.retire(id, this.batchEndLen);
  }

  /** Give buffer `id` back: skip its ring slots (§2.8.6) and free the id. */
  private retire(id: number, len: number): UsedBuffer<T> {
    const slots = this.slotsOf[id];
    this.outstanding -= slots;
    this.usedPos += slots;
    if (this.usedPos >= this.size) {
      this.usedPos -= this.size;
      this.usedWrap = !this.usedWrap;
    }
    const token = this.tokens[id] as T;
    this.tokens[id] = undefined;
    this.batchOf[id] = 0;
    if (!this.inOrder) this.freeIds[this.freeCount++] = id;
    const used = this.used;
    used.token = token;
    used.len = len;
    return used;
  }

  /** The tokens of the buffers in flight, for a driver failing them all (a reset or a broken ring). */
  tokensInFlight(): T[] {
    const all: T[] = [];
    for (let id = 0; id < this.size; id++) if (this.batchOf[id] !== 0) all.push(this.tokens[id] as T);
    return all;
  }

  enableInterrupts(): boolean {
    const word = this.eventIdx
      ? eventWord(RingEventFlags.DESC, offWrap(this.usedPos, this.usedWrap))
      : eventWord(RingEventFlags.ENABLE);
    Atomics.store(this.driverEvent, 0, word);
    if (this.batchEndId !== -1) return true;
    if (this.outstanding === 0 || this.usedPos === this.batchHead) return false;
    // Re-check after the request is visible: a buffer used meanwhile sent no interrupt. Malformed
    // flags count as pending so that getUsed() reports them.
    return (Atomics.load(this.halves, this.usedPos * 8 + 7) & AVAIL_USED) !== availablePattern(this.usedWrap);
  }

  disableInterrupts(): void {
    Atomics.store(this.driverEvent, 0, eventWord(RingEventFlags.DISABLE));
  }
}

// Errors of the per-buffer paths are made out of line: a template string costs bytecode, and
// V8 inlines a method into its caller only while the caller's inlined bytecode stays small.

function badUsedFlags(name: string, pos: number, flags: number): VirtqueueError {
  return new VirtqueueError('bad used flags', `${name}: descriptor ${pos} has flags ${hex(flags)}`);
}

function usedNotInFlight(name: string, id: number): VirtqueueError {
  return new VirtqueueError('used id not in flight', `${name}: the device used buffer id ${id}, not available to it`);
}

function usedBeyondBuffer(name: string, id: number, len: number, writable: number): VirtqueueError {
  return new VirtqueueError('used length beyond buffer', `${name}: the device claims ${len} bytes written into buffer ${id} of ${writable}`);
}

/** Everything of descriptor `pos` but its flags, which the caller stores when the buffer may be seen. */
function putDescriptor(words: Uint32Array, halves: Uint16Array, pos: number, addr: number, len: number, id: number): void {
  const w = pos * 4;
  words[w] = addr >>> 0;
  words[w + 1] = Math.floor(addr / 0x1_0000_0000);
  words[w + 2] = len;
  halves[pos * 8 + 6] = id;
}

/** A driver's own segment, checked so that a bad one fails here rather than in the device; returns its length. */
function checkSegment(name: string, addr: number, len: number): number {
  if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isInteger(len) || len < 0 || len > U32_MAX) throw badSegment(name, addr, len);
  return len;
}

function badSegment(name: string, addr: number, len: number): RangeError {
  return new RangeError(`${name}: segment of ${len} bytes at ${hex(addr)} is not a valid guest buffer`);
}

function mapIndirectTables(memory: GuestMemory, tables: IndirectTables, size: number, name: string): Uint32Array {
  const { addr, maxSegments } = tables;
  if (!Number.isInteger(maxSegments) || maxSegments < 2 || maxSegments > size) {
    throw new RangeError(`${name}: indirect tables of ${maxSegments} entries; 2 to the queue size ${size} are useful`);
  }
  const bytes = indirectTablesBytes(size, maxSegments);
  const area = Number.isSafeInteger(addr) && addr % DESC_SIZE === 0 ? memory.trySlice(addr, bytes) : undefined;
  if (area === undefined || area.byteOffset % 4 !== 0) {
    throw new RangeError(
      `${name}: indirect table area (${bytes} bytes at ${hex(addr)}) is not 16-byte aligned inside one guest memory region`,
    );
  }
  return new Uint32Array(area.buffer, area.byteOffset, bytes / 4);
}
