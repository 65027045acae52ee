/**
 * Device side of a packed virtqueue (§2.8): pops the chains a driver made available, writes used
 * descriptors back into the same ring, and decides on used buffer notifications.
 *
 * The device polls one place, the descriptor at its next avail position (§2.8.2); a chain there
 * is complete once its first descriptor is available, because the driver makes that one
 * available last (§2.8.6, §2.8.21). Used descriptors are written as chains are pushed, all but
 * the flags of the batch's first one, which publish() stores last: the driver polls its next used
 * position, the batch's first, so it never sees part of a batch.
 *
 * With VIRTIO_F_IN_ORDER the device must push chains in the order it popped them (§2.8.8), and
 * one used descriptor is written per run of consecutive chains, carrying the id and length of the
 * run's last chain: the driver takes the others as wholly used. A chain whose writable part was
 * only partly written therefore ends its run; a wholly written one waits for the next push or
 * publish() to know whether a later chain's descriptor covers it.
 */
import { ChainBuilder, indirectTableEntries } from '../chain.ts';
import { DESC_SIZE, DescFlag } from '../constants.ts';
import type { GuestMemory } from '../memory.ts';
import { addr64 as addr64Binding } from '../memory.ts';
import {
  type DescriptorChain,
  type QueueConfig,
  type ResubmittingQueue,
  type RingDescriptor,
  type SavedChain,
  type SpanVisitor,
  VirtqueueError,
} from '../queue.ts';
import {
  AVAIL_USED as AVAIL_USEDBinding,
  PACKED_FRESH_BASE,
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
const addr64 = addr64Binding;
const PLAIN_READ_ACQUIRES = PLAIN_READ_ACQUIRESBinding;
const U32_MAX = 0xffff_ffff;
/** The flags that make a descriptor more than a whole chain on its own (§2.8.6, §2.8.7). */
const CHAIN_FLAGS = NEXT | INDIRECT;
/** The flags that make a descriptor more than one device-readable buffer (§2.8.6, §2.8.7). */
const SPAN_FLAGS = NEXT | WRITE | INDIRECT;

export class PackedDeviceQueue implements ResubmittingQueue {
  readonly size: number;
  private readonly words: Uint32Array;
  private readonly halves: Uint16Array;
  private readonly driverEvent: Uint32Array;
  private readonly deviceEvent: Uint32Array;
  private readonly builder: ChainBuilder;
  private readonly eventIdx: boolean;
  private readonly indirect: boolean;
  private readonly inOrder: boolean;

  /** Next descriptor to pop. */
  private availPos: number;
  private availWrap: boolean;
  /** Where the batch publish() makes visible next starts: the position the driver polls. */
  private usedPos: number;
  private usedWrap: boolean;
  /** Where push() writes the next used descriptor: usedPos plus the slots pushed since publish(). */
  private pushPos: number;
  private pushWrap: boolean;
  /** Ring slots between the used and avail positions not yet claimed by a push. */
  private held: number;
  /** Extended used index at the last publish, the "old" of the event suppression check. */
  private signalled: number;

  /** Buffer ids popped and not pushed: an id names one buffer in flight (§2.8.13), so none may be reused before it comes back. */
  private readonly idInFlight: Uint8Array;
  private chainsInFlight = 0;
  /** With IN_ORDER: ids in the order popped, to hold push() to that order. */
  private readonly popOrder: Uint16Array;
  private popOrderHead = 0;
  private popOrderCount = 0;

  /** Chains pushed since publish(). */
  private pendingCount = 0;
  /** Flags of the used descriptor at usedPos, held back until publish(); -1 while not written. */
  private firstFlags = -1;
  /** With IN_ORDER: the last chain pushed wholly written and not yet covered (id, or -1, and length), and the ring slots of its run. */
  private deferredId = -1;
  private deferredWritten = 0;
  private runSlots = 0;

  /**
   * `base` resumes a ring saved with the `base` getter or received as vhost-user VRING_BASE
   * (bits 0-14 avail position, 15 avail wrap counter, 16-30 used position, 31 used wrap counter);
   * the default is a fresh ring, PACKED_FRESH_BASE (0 is not fresh: see there). Throws VirtqueueError when the driver's configuration or the base
   * is invalid.
   */
  constructor(
    private readonly memory: GuestMemory,
    config: QueueConfig,
    private readonly name: string,
    base = PACKED_FRESH_BASE,
  ) {
    const views = mapPackedRing(memory, config, name);
    const size = config.size;
    this.size = size;
    this.words = views.words;
    this.halves = views.halves;
    this.driverEvent = views.driverEvent;
    this.deviceEvent = views.deviceEvent;
    this.builder = new ChainBuilder(memory, name, size);
    this.eventIdx = config.eventIdx;
    this.indirect = config.indirect;
    this.inOrder = config.inOrder;

    if (!Number.isInteger(base) || base < 0 || base > U32_MAX) {
      throw new VirtqueueError('bad ring base', `${name}: ${base} is not a 32-bit value`);
    }
    this.availPos = base & 0x7fff;
    this.availWrap = (base & 0x8000) !== 0;
    this.usedPos = (base >>> 16) & 0x7fff;
    this.usedWrap = base >>> 31 === 1;
    this.pushPos = this.usedPos;
    this.pushWrap = this.usedWrap;
    if (this.availPos >= size || this.usedPos >= size) {
      throw new VirtqueueError('bad ring base', `${name}: base ${hex(base)} names a position beyond size ${size}`);
    }
    const availExt = extendedIndex(this.availPos, this.availWrap, size);
    this.signalled = extendedIndex(this.usedPos, this.usedWrap, size);
    // Slots popped before the save and not yet used: the avail position leads by at most a lap.
    this.held = (availExt - this.signalled + 2 * size) % (2 * size);
    if (this.held > size) {
      throw new VirtqueueError('bad ring base', `${name}: base ${hex(base)} puts avail more than a lap ahead of used`);
    }

    this.idInFlight = new Uint8Array(size);
    this.popOrder = new Uint16Array(config.inOrder ? size : 0);
  }

  /** The ring position as published (see DeviceQueue.base): publish() pushed chains before saving it. */
  get base(): number {
    return (
      (this.availPos | (this.availWrap ? 0x8000 : 0) | (this.usedPos << 16) | (this.usedWrap ? 0x8000_0000 : 0)) >>> 0
    );
  }

  get inFlight(): number {
    return this.chainsInFlight;
  }

  pop(): DescriptorChain | null {
    const pos = this.availPos;
    const wrap = this.availWrap;
    const flags = this.availableHead(pos, wrap);
    if (flags === -1) return null;
    if ((flags & CHAIN_FLAGS) !== 0) return this.walk(pos, wrap, flags);
    // One direct descriptor, the common case, taken without the walk (which stays out of line, so
    // that this path is small enough to be inlined where pop() is called): the walk's checks in
    // its order, the buffer inside guest memory, then the id and the ring's capacity in claim().
    const builder = this.builder;
    const words = this.words;
    const w = pos * 4;
    const addr = addr64(words[w], words[w + 1]);
    const len = words[w + 2];
    const region = builder.locate(addr, len);
    const id = this.halves[pos * 8 + 6];
    if (pos + 1 === this.size) this.claim(id, 1, 0, !wrap);
    else this.claim(id, 1, pos + 1, wrap);
    return builder.single(id, region, addr, len, (flags & WRITE) !== 0);
  }

  /**
   * Follow the chain whose head at avail position `pos`, lap `wrap`, the driver made available
   * with `flags`: a list of descriptors linked by NEXT, or one indirect descriptor (§2.8.6, §2.8.7).
   */
  private walk(pos: number, wrap: boolean, flags: number): DescriptorChain {
    const size = this.size;
    const halves = this.halves;
    const words = this.words;
    const builder = this.builder;
    builder.reset();
    let slots = 0;
    for (;;) {
      const w = pos * 4;
      const addr = addr64(words[w], words[w + 1]);
      const len = words[w + 2];
      if ((flags & INDIRECT) !== 0) {
        // §2.8.7: an indirect descriptor is a whole buffer on its own, never part of a NEXT list.
        if (slots !== 0 || (flags & NEXT) !== 0) {
          throw new VirtqueueError('indirect in chain', `${this.name}: INDIRECT descriptor at ${pos} is part of a list`);
        }
        this.readIndirect(addr, len);
      } else {
        builder.add(addr, len, (flags & WRITE) !== 0, size);
      }
      slots++;
      const id = halves[pos * 8 + 6];
      if (++pos === size) {
        pos = 0;
        wrap = !wrap;
      }
      if ((flags & NEXT) === 0) {
        this.claim(id, slots, pos, wrap);
        return builder.build(id, slots);
      }
      flags = halves[pos * 8 + 7];
      // §2.8.6: the driver makes the first descriptor available after the rest, so every later one must already be.
      if ((flags & AVAIL_USED) !== availablePattern(wrap)) {
        throw new VirtqueueError(
          'chain not available',
          `${this.name}: descriptor ${pos} continues a chain but is not available (flags ${hex(flags)})`,
        );
      }
    }
  }

  /**
   * The flags of the descriptor at avail position `pos`, lap `wrap`, once the driver made it
   * available (§2.8.1), or -1 while it has not. Acquire: the flags are read before anything the
   * driver wrote before them; a plain read showing it available is that acquire where
   * PLAIN_READ_ACQUIRES says so.
   */
  private availableHead(pos: number, wrap: boolean): number {
    const halves = this.halves;
    let flags = halves[pos * 8 + 7];
    if (!PLAIN_READ_ACQUIRES || (flags & AVAIL_USED) !== availablePattern(wrap)) flags = Atomics.load(halves, pos * 8 + 7);
    const headState = flags & AVAIL_USED;
    if (headState === availablePattern(wrap)) return flags;
    if (headState === usedPattern(wrap)) throw this.badFlags(pos, flags);
    return -1;
  }

  drainSpans(visit: SpanVisitor, max: number): number {
    // With IN_ORDER a chain may only go back once every chain popped before it did (§2.8.8,
    // §2.8.20): with chains in flight, pop() and push() keep that order.
    if (this.inOrder && this.chainsInFlight !== 0) return 0;
    const size = this.size;
    const words = this.words;
    const halves = this.halves;
    let visited = 0;
    while (visited < max) {
      const pos = this.availPos;
      const wrap = this.availWrap;
      const flags = this.availableHead(pos, wrap);
      // One device-readable descriptor: no NEXT, WRITE or INDIRECT (§2.8.6, §2.8.7). Anything
      // else is left available for pop(), which walks and checks it.
      if (flags === -1 || (flags & SPAN_FLAGS) !== 0) break;
      const w = pos * 4;
      const addr = addr64(words[w], words[w + 1]);
      const len = words[w + 2];
      const region = this.builder.locate(addr, len);
      const id = halves[pos * 8 + 6];
      const next = pos + 1;
      if (next === size) this.claim(id, 1, 0, !wrap);
      else this.claim(id, 1, next, wrap);
      visited++;
      // locate() checked that [addr, addr+len) lies in the region.
      if (!visit(region.bytes, addr - region.start, len)) break;
      // Nothing written to a chain with no writable part: wholly written (§2.8.8's runs).
      this.retire(id, 1, 0, true);
    }
    return visited;
  }

  /** Add the entries of an indirect table (§2.8.7) to the chain being built. */
  private readIndirect(addr: number, len: number): void {
    const entries = indirectTableEntries(this.name, len, this.indirect, false, this.size);
    const table = this.memory.trySlice(addr, len);
    if (table === undefined) {
      throw new VirtqueueError('indirect table outside guest memory', `${this.name}: ${len} bytes at ${hex(addr)}`);
    }
    const view = new DataView(table.buffer, table.byteOffset, len);
    for (let i = 0; i < entries; i++) {
      const o = i * DESC_SIZE;
      // Only WRITE is meaningful in a table entry; other flags and the id are reserved and ignored (§2.8.7).
      const write = (view.getUint16(o + 14, true) & WRITE) !== 0;
      this.builder.add(addr64(view.getUint32(o, true), view.getUint32(o + 4, true)), view.getUint32(o + 8, true), write, entries);
    }
  }

  /**
   * Last checks on a walked chain of `slots` ring descriptors ending before `pos`, lap `wrap`,
   * then commit: nothing changes, the record of a buffer id in flight included, before a chain is
   * known good.
   */
  private claim(id: number, slots: number, pos: number, wrap: boolean): void {
    this.checkId(id);
    if (this.held + slots > this.size) throw ringOverrun(this.name);
    this.held += slots;
    this.availPos = pos;
    this.availWrap = wrap;
    this.hold(id);
  }

  private checkId(id: number): void {
    if (id >= this.size) throw idOutOfRange(this.name, id, this.size);
    if (this.idInFlight[id] !== 0) throw idInUse(this.name, id);
  }

  /** Buffer `id` is now in flight. */
  private hold(id: number): void {
    this.idInFlight[id] = 1;
    this.chainsInFlight++;
    if (this.inOrder) {
      this.popOrder[(this.popOrderHead + this.popOrderCount) % this.size] = id;
      this.popOrderCount++;
    }
  }

  /** Used descriptors overwrite the slots of chains still in flight (§2.8.8): a record must copy them. */
  readonly savesDescriptors = true;

  poppedDescriptors(chain: DescriptorChain): RingDescriptor[] {
    const out: RingDescriptor[] = [];
    let pos = (this.availPos - chain.ringDescriptors + this.size) % this.size;
    for (let k = 0; k < chain.ringDescriptors; k++) {
      const w = pos * 4;
      out.push({ addr: addr64(this.words[w], this.words[w + 1]), len: this.words[w + 2], id: this.halves[pos * 8 + 6], flags: this.halves[pos * 8 + 7] });
      if (++pos === this.size) pos = 0;
    }
    return out;
  }

  /**
   * The chain the copies in `saved` describe, checked by the rules pop() applies to the ring: an
   * indirect descriptor alone, NEXT on every descriptor but the last, the buffer id in the last
   * one. Its slots lie between the used and avail positions the queue was built with.
   */
  resubmit(saved: SavedChain): DescriptorChain {
    const descriptors = saved.descriptors;
    const n = descriptors.length;
    if (n < 1 || n > this.held) {
      throw new VirtqueueError('bad saved chain', `${this.name}: a saved chain of ${n} descriptors, ${this.held} ring slots held`);
    }
    const builder = this.builder;
    builder.reset();
    for (let k = 0; k < n; k++) {
      const { addr, len, flags } = descriptors[k];
      if ((flags & NEXT) !== 0 !== (k + 1 < n)) {
        throw new VirtqueueError('bad saved chain', `${this.name}: descriptor ${k} of a saved chain of ${n} has NEXT ${(flags & NEXT) !== 0}`);
      }
      if ((flags & INDIRECT) !== 0) {
        if (n !== 1) throw new VirtqueueError('indirect in chain', `${this.name}: a saved INDIRECT descriptor is part of a list`);
        this.readIndirect(addr, len);
      } else {
        builder.add(addr, len, (flags & WRITE) !== 0, this.size);
      }
    }
    const id = descriptors[n - 1].id;
    this.checkId(id);
    this.hold(id);
    return builder.build(id, n);
  }

  private badFlags(pos: number, flags: number): VirtqueueError {
    return new VirtqueueError(
      'bad avail flags',
      `${this.name}: descriptor ${pos} has AVAIL and USED both equal to the wrap counter (flags ${hex(flags)})`,
    );
  }

  push(chain: DescriptorChain, written: number): void {
    if (!Number.isInteger(written) || written < 0 || written > chain.writableLength) throw badWritten(this.name, chain, written);
    const id = chain.id;
    if (chain.ringDescriptors > this.held) throw pushNotInFlight(this.name, id);
    this.retire(id, chain.ringDescriptors, written, written === chain.writableLength);
  }

  /**
   * Buffer `id`, held in `slots` ring slots, goes back with `written` bytes (`complete`: all its
   * writable part could take), in pop order with IN_ORDER.
   */
  private retire(id: number, slots: number, written: number, complete: boolean): void {
    if (this.idInFlight[id] !== 0) {
      if (this.inOrder) {
        if (this.popOrder[this.popOrderHead] !== id) throw outOfOrder(this.name, id);
        this.popOrderHead = (this.popOrderHead + 1) % this.size;
        this.popOrderCount--;
      }
      this.idInFlight[id] = 0;
      this.chainsInFlight--;
    }
    this.held -= slots;
    this.pendingCount++;
    const run = this.runSlots + slots;
    if (this.inOrder && complete) {
      // IN_ORDER: a chain wholly written may be covered by the used descriptor of a later one (§2.8.8).
      this.deferredId = id;
      this.deferredWritten = written;
      this.runSlots = run;
      return;
    }
    this.writeUsed(id, written, run);
  }

  /** Write the used descriptor standing for `slots` ring slots at pushPos; the batch's first one's flags wait for publish(). */
  private writeUsed(id: number, written: number, slots: number): void {
    const pos = this.pushPos;
    this.words[pos * 4 + 2] = written;
    this.halves[pos * 8 + 6] = id;
    // §2.8.3, §2.8.4: WRITE in a used descriptor says whether len counts written bytes.
    const flags = usedPattern(this.pushWrap) | (written !== 0 ? WRITE : 0);
    if (this.firstFlags === -1) this.firstFlags = flags;
    else this.halves[pos * 8 + 7] = flags;
    this.deferredId = -1;
    this.runSlots = 0;
    this.pushPos = pos + slots;
    if (this.pushPos >= this.size) {
      this.pushPos -= this.size;
      this.pushWrap = !this.pushWrap;
    }
  }

  publish(): boolean {
    if (this.pendingCount === 0) return false;
    if (this.deferredId !== -1) this.writeUsed(this.deferredId, this.deferredWritten, this.runSlots);
    // §2.8.21: the batch becomes visible at once when its first descriptor's flags are released last.
    Atomics.store(this.halves, this.usedPos * 8 + 7, this.firstFlags);
    this.firstFlags = -1;
    this.pendingCount = 0;
    const size = this.size;
    const pos = this.pushPos;
    const wrap = this.pushWrap;
    this.usedPos = pos;
    this.usedWrap = wrap;
    const now = extendedIndex(pos, wrap, size);
    const before = this.signalled;
    this.signalled = now;
    // Atomics.store then Atomics.load are sequentially consistent: the driver's event word is read
    // after the used flags are visible, the device's half of the race the driver closes by
    // re-checking after it enables notifications (§2.8.22).
    return needsNotification(Atomics.load(this.driverEvent, 0), this.eventIdx, before, now, size);
  }

  enableNotifications(): boolean {
    const word = this.eventIdx
      ? eventWord(RingEventFlags.DESC, offWrap(this.availPos, this.availWrap))
      : eventWord(RingEventFlags.ENABLE);
    Atomics.store(this.deviceEvent, 0, word);
    // Re-check after the request is visible: a buffer made available meanwhile sent no notification.
    // Malformed flags (USED matching the counter too) count as available so that pop() reports them.
    // A descriptor whose AVAIL bit does not match the wrap counter is left from the previous lap.
    return ((Atomics.load(this.halves, this.availPos * 8 + 7) & DescFlag.AVAIL) !== 0) === this.availWrap;
  }

  unpop(chain: DescriptorChain): void {
    this.unresubmit(chain);
    this.held -= chain.ringDescriptors;
    // §2.8.1: stepping back over the start of the ring steps back a lap, the wrap counter too.
    this.availPos -= chain.ringDescriptors;
    if (this.availPos < 0) {
      this.availPos += this.size;
      this.availWrap = !this.availWrap;
    }
  }

  unresubmit(chain: DescriptorChain): void {
    const id = chain.id;
    if (this.idInFlight[id] !== 1 || chain.ringDescriptors > this.held) throw new RangeError(`${this.name}: buffer ${id} is not in flight`);
    this.idInFlight[id] = 0;
    this.chainsInFlight--;
    if (this.inOrder) this.popOrderCount--;
  }

  disableNotifications(): void {
    Atomics.store(this.deviceEvent, 0, eventWord(RingEventFlags.DISABLE));
  }
}

// Errors of the per-chain paths are made out of line: a template string costs bytecode, and V8
// inlines a method into its caller only while the caller's inlined bytecode stays small.

function ringOverrun(name: string): VirtqueueError {
  return new VirtqueueError('ring overrun', `${name}: the driver made available descriptors the device has not used yet`);
}

function idOutOfRange(name: string, id: number, size: number): VirtqueueError {
  return new VirtqueueError('buffer id out of range', `${name}: id ${id}, queue size ${size}`);
}

function idInUse(name: string, id: number): VirtqueueError {
  return new VirtqueueError('buffer id in use', `${name}: id ${id} was made available again before it was used`);
}

function badWritten(name: string, chain: DescriptorChain, written: number): RangeError {
  return new RangeError(`${name}: written ${written} is not in 0..${chain.writableLength}`);
}

function pushNotInFlight(name: string, id: number): RangeError {
  return new RangeError(`${name}: push of buffer ${id}, which is not in flight`);
}

function outOfOrder(name: string, id: number): RangeError {
  return new RangeError(`${name}: with IN_ORDER buffers must be pushed in the order popped (got ${id})`);
}
