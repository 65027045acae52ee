/**
 * The device side of a split virtqueue (§2.7): pops descriptor chains the driver made available,
 * returns them through the used ring, and manages notifications in both directions.
 *
 * Everything in the rings is written by the driver and so hostile: every index, flag and table
 * is checked before use, and a broken rule throws VirtqueueError without touching anything
 * outside guest memory. Ring fields are read through views resolved once at construction.
 */
import { DescFlag } from '../constants.ts';
import { ChainBuilder, INDIRECT_TABLE_MIN_LIMIT, indirectTableEntries } from '../chain.ts';
import { addr64, type GuestMemory } from '../memory.ts';
import {
  VirtqueueError,
  type DescriptorChain,
  type QueueConfig,
  type ResubmittingQueue,
  type RingDescriptor,
  type SavedChain,
  type SpanVisitor,
} from '../queue.ts';
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

/** The flags that make a descriptor more than a whole chain on its own (§2.7.5, §2.7.5.3). */
const CHAIN_FLAGS = DescFlag.NEXT | DescFlag.INDIRECT;
/** The flags that make a descriptor more than one device-readable buffer (§2.7.5). */
const SPAN_FLAGS = DescFlag.NEXT | DescFlag.WRITE | DescFlag.INDIRECT;

/**
 * One split virtqueue as the device sees it. Not safe for concurrent use from several threads;
 * the driver may run anywhere that shares the memory (the ring fields it races on are accessed
 * with Atomics).
 */
export class SplitDeviceQueue implements ResubmittingQueue {
  readonly size: number;
  private readonly mask: number;
  private readonly desc: Uint32Array;
  private readonly avail: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly usedEventAt: number;
  private readonly availEventAt: number;
  private readonly eventIdx: boolean;
  private readonly indirect: boolean;
  private readonly inOrder: boolean;
  private readonly builder: ChainBuilder;
  /** Indirect tables are copied here before walking (allocated on first use). */
  private indirectCopy: Uint32Array | undefined;
  /** Per head index: 1 while its chain is popped and not yet pushed. */
  private readonly popped: Uint8Array;
  private inFlightCount = 0;
  /** Next available ring index to pop. */
  private lastAvail: number;
  /** avail->idx as last read; entries before it are known to be available. */
  private shadowAvail: number;
  /** Next used ring index to fill, and the used->idx the driver can see. */
  private usedIdx: number;
  private publishedUsed: number;
  /**
   * IN_ORDER (§2.7.9): heads in the order they were popped (a device that negotiated IN_ORDER
   * must push in that order) with the slots of the next pop and push, and the batch of pushed
   * buffers not yet written to the used ring.
   */
  private readonly popOrder: Uint16Array | undefined;
  private popSeq = 0;
  private pushSeq = 0;
  private batchCount = 0;
  private batchId = 0;
  private batchLen = 0;
  private batchComplete = false;

  /**
   * `base` is the index of the next available entry to pop (vhost-user SET_VRING_BASE); the used
   * index resumes from used->idx in guest memory, which the device last published there.
   */
  constructor(
    private readonly memory: GuestMemory,
    config: QueueConfig,
    private readonly name: string,
    base = 0,
  ) {
    if (!Number.isInteger(base) || base < 0 || base > 0xffff) {
      throw new RangeError(`${name}: queue base ${base} is not a 16-bit ring index`);
    }
    const views = mapSplitRing(memory, config, name);
    this.size = config.size;
    this.mask = config.size - 1;
    this.desc = views.desc;
    this.avail = views.avail;
    this.used16 = views.used16;
    this.used32 = views.used32;
    this.usedEventAt = availUsedEvent(config.size);
    this.availEventAt = usedAvailEvent(config.size);
    this.eventIdx = config.eventIdx;
    this.indirect = config.indirect;
    this.inOrder = config.inOrder;
    this.builder = new ChainBuilder(memory, name, config.size);
    this.popped = new Uint8Array(config.size);
    this.popOrder = config.inOrder ? new Uint16Array(config.size) : undefined;
    this.lastAvail = base;
    this.shadowAvail = base;
    this.usedIdx = Atomics.load(this.used16, RING_IDX);
    this.publishedUsed = this.usedIdx;
  }

  get base(): number {
    return this.lastAvail;
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  pop(): DescriptorChain | null {
    const last = this.lastAvail;
    if (last === this.shadowAvail && !this.refreshAvail(last)) return null;
    const head = this.avail[AVAIL_RING + (last & this.mask)];
    const chain = this.take(head, 'made available twice');
    this.lastAvail = (last + 1) & 0xffff;
    return chain;
  }

  /**
   * Read avail->idx again, the next entry to pop being `last`: whether entries are available now.
   * Acquire: the ring entries and descriptors behind idx are read after it (§2.7.13.3).
   */
  private refreshAvail(last: number): boolean {
    const idx = Atomics.load(this.avail, RING_IDX);
    if (idx === last) return false;
    if (((idx - last) & 0xffff) > this.size) {
      throw new VirtqueueError(
        'avail index jump',
        `${this.name}: avail idx went from ${last} to ${idx}, more than the queue size ${this.size} ahead`,
      );
    }
    this.shadowAvail = idx;
    return true;
  }

  /** The descriptor table keeps a chain until it is used (§2.7.5): its head names it. */
  readonly savesDescriptors = false;

  poppedDescriptors(): RingDescriptor[] {
    return [];
  }

  /** The chain at head `saved.id` of the descriptor table. */
  resubmit(saved: SavedChain): DescriptorChain {
    const head = saved.id;
    if (!Number.isInteger(head)) throw new VirtqueueError('head out of range', `${this.name}: resubmitted head ${head} is not an index`);
    return this.take(head, 'resubmitted while in flight');
  }

  /** Check `head`, walk its chain and mark it in flight (in pop order, for IN_ORDER). */
  private take(head: number, twice: string): DescriptorChain {
    this.checkHead(head, twice);
    const desc = this.desc;
    const w = head << 2;
    const flags = desc[w + 3];
    let chain: DescriptorChain;
    if ((flags & CHAIN_FLAGS) === 0) {
      // One direct descriptor, the common case, taken without the walk (which stays out of line,
      // so that this path is small enough to be inlined where pop() is called): the walk's
      // checks, the buffer inside guest memory; a chain of one cannot be too long, overflow, or
      // have readable after writable.
      const builder = this.builder;
      const addr = addr64(desc[w], desc[w + 1]);
      const len = desc[w + 2];
      chain = builder.single(head, builder.locate(addr, len), addr, len, (flags & DescFlag.WRITE) !== 0);
    } else {
      chain = this.walk(head);
    }
    this.markInFlight(head);
    return chain;
  }

  /** A head from the driver names a descriptor of the table and no chain the device holds. */
  private checkHead(head: number, twice: string): void {
    if (head < 0 || head >= this.size) throw headOutOfRange(this.name, head, this.size);
    if (this.popped[head] !== 0) throw headInFlight(this.name, head, twice);
  }

  private markInFlight(head: number): void {
    this.popped[head] = 1;
    this.inFlightCount++;
    if (this.popOrder !== undefined) {
      this.popOrder[this.popSeq] = head;
      this.popSeq = (this.popSeq + 1) & this.mask;
    }
  }

  drainSpans(visit: SpanVisitor, max: number): number {
    // With IN_ORDER a chain may only go back once every chain popped before it did (§2.7.9):
    // with chains in flight, pop() and push() keep that order.
    if (this.inOrder && this.inFlightCount !== 0) return 0;
    const desc = this.desc;
    let visited = 0;
    while (visited < max) {
      const last = this.lastAvail;
      if (last === this.shadowAvail && !this.refreshAvail(last)) break;
      const head = this.avail[AVAIL_RING + (last & this.mask)];
      this.checkHead(head, 'made available twice');
      const w = head << 2;
      const len = desc[w + 2];
      // One device-readable descriptor: no NEXT, WRITE or INDIRECT (§2.7.5). Anything else is
      // left available for pop(), which walks and checks it.
      if ((desc[w + 3] & SPAN_FLAGS) !== 0) break;
      const addr = addr64(desc[w], desc[w + 1]);
      const region = this.builder.locate(addr, len);
      this.markInFlight(head);
      this.lastAvail = (last + 1) & 0xffff;
      visited++;
      // locate() checked that [addr, addr+len) lies in the region.
      if (!visit(region.bytes, addr - region.start, len)) break;
      // Nothing written to a chain with no writable part: wholly written (§2.7.9's batches).
      this.retire(head, 0, true);
    }
    return visited;
  }

  /**
   * Follow a chain from `head`: direct descriptors, optionally ending in one indirect descriptor
   * whose table holds the rest (§2.7.5.3). Loops end at the builder's length limit.
   */
  private walk(head: number): DescriptorChain {
    const builder = this.builder;
    builder.reset();
    let table = this.desc;
    let tableLength = this.size;
    let limit = this.size;
    let nested = false;
    let data = 0;
    // Slots the chain holds in the ring's own table: all of them, or those up to the indirect one.
    let ringDescriptors = 0;
    let i = head;
    for (;;) {
      const w = i << 2;
      const addr = addr64(table[w], table[w + 1]);
      const len = table[w + 2];
      const flagsNext = table[w + 3];
      if ((flagsNext & DescFlag.INDIRECT) !== 0) {
        const entries = indirectTableEntries(this.name, len, this.indirect, nested, this.size);
        if ((flagsNext & DescFlag.NEXT) !== 0) {
          throw new VirtqueueError('indirect with next', `${this.name}: descriptor ${i} sets both INDIRECT and NEXT`);
        }
        table = this.copyIndirect(addr, len);
        tableLength = entries;
        // The table's entries come on top of the direct descriptors already in the chain.
        limit = data + entries;
        ringDescriptors = data + 1;
        nested = true;
        i = 0;
        continue;
      }
      builder.add(addr, len, (flagsNext & DescFlag.WRITE) !== 0, limit);
      data++;
      if ((flagsNext & DescFlag.NEXT) === 0) {
        return builder.build(head, nested ? ringDescriptors : data);
      }
      i = flagsNext >>> 16;
      if (i >= tableLength) {
        throw new VirtqueueError('next out of range', `${this.name}: next ${i} >= table size ${tableLength}`);
      }
    }
  }

  /**
   * Copy an indirect table out of guest memory so it can be walked with the same word view as the
   * ring's own table, wherever it is placed (§2.7.5.3 sets no alignment for it).
   */
  private copyIndirect(addr: number, len: number): Uint32Array {
    const src = this.memory.trySlice(addr, len);
    if (src === undefined) {
      throw new VirtqueueError(
        'indirect table outside guest memory',
        `${this.name}: ${len} bytes at 0x${addr.toString(16)}`,
      );
    }
    let copy = this.indirectCopy;
    if (copy === undefined) {
      // Room for the longest table indirectTableEntries lets through.
      copy = new Uint32Array(Math.max(this.size, INDIRECT_TABLE_MIN_LIMIT) * 4);
      this.indirectCopy = copy;
    }
    new Uint8Array(copy.buffer, 0, len).set(src);
    return copy;
  }

  push(chain: DescriptorChain, written: number): void {
    const id = chain.id;
    if (this.popped[id] !== 1) throw notInFlight(this.name, id);
    if (!Number.isInteger(written) || written < 0 || written > chain.writableLength) throw badWritten(this.name, chain, written);
    if (this.popOrder !== undefined && id !== this.popOrder[this.pushSeq]) throw outOfOrder(this.name, id, this.popOrder[this.pushSeq]);
    this.retire(id, written, written === chain.writableLength);
  }

  /** Head `id`, in flight and in order, goes back with `written` bytes (`complete`: all it could take). */
  private retire(id: number, written: number, complete: boolean): void {
    this.popped[id] = 0;
    this.inFlightCount--;
    if (this.popOrder !== undefined) this.pushSeq = (this.pushSeq + 1) & this.mask;
    if (this.inOrder) this.batch(id, written, complete);
    else this.writeUsed(id, written, 1);
  }

  /**
   * §2.7.9: with IN_ORDER one used element, naming the last buffer of a batch, returns the whole
   * batch; the buffers it skips count as wholly written, so a partly written buffer ends a batch.
   */
  private batch(id: number, written: number, complete: boolean): void {
    if (this.batchCount > 0 && !this.batchComplete) this.flushBatch();
    this.batchId = id;
    this.batchLen = written;
    this.batchComplete = complete;
    this.batchCount++;
  }

  private flushBatch(): void {
    this.writeUsed(this.batchId, this.batchLen, this.batchCount);
    this.batchCount = 0;
  }

  /** Fill the used element at the used index, then move the index past `buffers` buffers. */
  private writeUsed(id: number, len: number, buffers: number): void {
    const e = 1 + ((this.usedIdx & this.mask) << 1);
    this.used32[e] = id;
    this.used32[e + 1] = len;
    this.usedIdx = (this.usedIdx + buffers) & 0xffff;
  }

  publish(): boolean {
    if (this.batchCount > 0) this.flushBatch();
    const old = this.publishedUsed;
    const now = this.usedIdx;
    if (now === old) return false;
    // Release: the elements are written before idx (§2.7.8.2). Atomics are sequentially
    // consistent, so this store and the load below are also the full fence that keeps a driver
    // re-enabling interrupts from being missed (§2.7.7).
    Atomics.store(this.used16, RING_IDX, now);
    this.publishedUsed = now;
    if (this.eventIdx) return needEvent(Atomics.load(this.avail, this.usedEventAt), now, old);
    return (Atomics.load(this.avail, RING_FLAGS) & AVAIL_F_NO_INTERRUPT) === 0;
  }

  enableNotifications(): boolean {
    // §2.7.10: ask to be notified when the driver fills the entry after the last one popped.
    if (this.eventIdx) Atomics.store(this.used16, this.availEventAt, this.lastAvail);
    else Atomics.store(this.used16, RING_FLAGS, 0);
    // Sequentially consistent store then load: a buffer made available before the driver could
    // see the request is found here rather than lost.
    return Atomics.load(this.avail, RING_IDX) !== this.lastAvail;
  }

  unpop(chain: DescriptorChain): void {
    this.unresubmit(chain);
    this.lastAvail = (this.lastAvail - 1) & 0xffff;
  }

  unresubmit(chain: DescriptorChain): void {
    const id = chain.id;
    if (this.popped[id] !== 1) throw notInFlight(this.name, id);
    this.popped[id] = 0;
    this.inFlightCount--;
    if (this.popOrder !== undefined) this.popSeq = (this.popSeq - 1) & this.mask;
  }

  disableNotifications(): void {
    // With EVENT_IDX flags must stay 0 (§2.7.10); an avail_event one behind the last popped entry
    // is only reached after 65535 more buffers, more than the ring can hold before the device
    // pops again and re-arms.
    if (this.eventIdx) this.used16[this.availEventAt] = (this.lastAvail - 1) & 0xffff;
    else this.used16[RING_FLAGS] = USED_F_NO_NOTIFY;
  }
}

// Errors of the per-chain paths are made out of line: a template string costs bytecode, and V8
// inlines a method into its caller only while the caller's inlined bytecode stays small.

function headOutOfRange(name: string, head: number, size: number): VirtqueueError {
  return new VirtqueueError('head out of range', `${name}: head ${head} >= queue size ${size}`);
}

function headInFlight(name: string, head: number, twice: string): VirtqueueError {
  return new VirtqueueError('head already in flight', `${name}: head ${head} ${twice}`);
}

function notInFlight(name: string, id: number): RangeError {
  return new RangeError(`${name}: chain ${id} is not in flight`);
}

function badWritten(name: string, chain: DescriptorChain, written: number): RangeError {
  return new RangeError(`${name}: ${written} bytes written to chain ${chain.id}, whose writable part is ${chain.writableLength} bytes`);
}

function outOfOrder(name: string, id: number, expected: number): RangeError {
  return new RangeError(`${name}: IN_ORDER queue pushed chain ${id} before chain ${expected}`);
}
