/**
 * A packed ring's record in the inflight region (inflight.ts), laid out as vhost-user.rst's
 * "QueueRegionPacked":
 *
 *     features u64 | version u16 | desc_num u16 | free_head u16 | old_free_head u16
 *     used_idx u16 | old_used_idx u16 | used_wrap_counter u8 | old_used_wrap_counter u8 | padding
 *     desc[desc_num] (32 bytes): inflight u8 | padding u8 | next u16 | last u16 | num u16
 *                                counter u64 | id u16 | flags u16 | len u32 | addr u64
 *
 * Unlike a split ring, a packed ring writes used descriptors over the slots of chains still in
 * flight (§2.8.8), so the record keeps copies of each chain's ring descriptors: entries linked
 * through `next`, the first one holding `num`, `last`, `counter` and the inflight flag. Returned
 * chains are linked from free_head through their last entry's `next`, and used_idx with its wrap
 * counter says where the device's next used descriptor goes; old_* are the values the last
 * publish committed. A publish is prepared (used_idx moves), made visible in the ring, then
 * committed (inflight cleared, old_* caught up), so after a crash in between the ring itself
 * tells which happened: the slot at old_used_idx still holds its available descriptor, or not.
 *
 * Which entries are free is not trusted to the region: recovery rebuilds the free list from the
 * chains it keeps. The front-end owns the memory and a crashed back-end may have left it
 * half-written: every index, count and flag read is checked, and a chain that cannot be made
 * sense of is dropped with a log line, never trusted.
 */
import type { Logger } from 'pino';
import { type DescriptorChain, type RingDescriptor, type SavedChain, VirtqueueError } from '../../virtio/queue.ts';
import type { InflightRecord } from './inflight-queue.ts';

export const PACKED_HEADER_SIZE = 32;
export const PACKED_DESC_SIZE = 32;
const VERSION = 1;

/** Byte offsets in a ring's region. */
const VERSION_AT = 8;
const DESC_NUM_AT = 10;
const FREE_HEAD_AT = 12;
const OLD_FREE_HEAD_AT = 14;
const USED_IDX_AT = 16;
const OLD_USED_IDX_AT = 18;
const USED_WRAP_AT = 20;
const OLD_USED_WRAP_AT = 21;
/** Byte offsets in one desc entry. */
const INFLIGHT_AT = 0;
const NEXT_AT = 2;
const LAST_AT = 4;
const NUM_AT = 6;
const COUNTER_AT = 8;
const ID_AT = 16;
const FLAGS_AT = 18;
const LEN_AT = 20;
const ADDR_AT = 24;

/** What a restarted packed ring resumes from: its position and the chains to serve again, oldest first. */
export interface PackedResume {
  /** The ring position in DeviceQueue.base form: the used position from the record, avail past every chain in flight. */
  readonly base: number;
  readonly chains: readonly SavedChain[];
}

/** Where a packed ring's used descriptors go: a slot and its wrap counter (§2.8.1). */
interface UsedPosition {
  pos: number;
  wrap: boolean;
}

/** A position folded with its wrap counter into [0, 2 * size), as the ring counts laps (packed/ring.ts). */
function extended(p: UsedPosition, size: number): number {
  return p.wrap ? p.pos : p.pos + size;
}

export class PackedInflight implements InflightRecord {
  private readonly view: DataView;
  private counter = 1;
  private ringSize = 0;
  /** Entries no chain holds. */
  private free: number[] = [];
  /** Per first entry of a recorded chain: all its entries, in chain order. */
  private readonly chainEntries: (number[] | undefined)[];
  /** Per buffer id in flight: the first entry of its chain, or -1. */
  private readonly headOf: Int32Array;
  /** First entries of the chains returned since the last publish, and the ring slots they span. */
  private batch: number[] = [];
  private batchSlots = 0;
  private freeHead: number;
  private used: UsedPosition = { pos: 0, wrap: true };
  private pending: SavedChain[] = [];

  constructor(
    bytes: Uint8Array,
    /** Entries the region has room for (desc_num). */
    private readonly entries: number,
    private readonly index: number,
    private readonly log: Logger,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    this.chainEntries = new Array<number[] | undefined>(entries).fill(undefined);
    this.headOf = new Int32Array(entries).fill(-1);
    this.freeHead = entries;
  }

  private at(entry: number, field: number): number {
    return PACKED_HEADER_SIZE + entry * PACKED_DESC_SIZE + field;
  }

  /**
   * Called when a ring of `ringSize` entries starts. `frontEndBase` is the position the
   * front-end sent (DeviceQueue.base form); `slotUsed(pos, wrap)` reads the ring (ring.ts
   * packedSlotUsed). A never-used region is initialised from the front-end's base and undefined
   * returned: nothing to resubmit. Otherwise the record is repaired and says where the ring
   * stands, which after a crash the front-end cannot know (QEMU then sends a stale position).
   */
  recover(ringSize: number, frontEndBase: number, slotUsed: (pos: number, wrap: boolean) => boolean): PackedResume | undefined {
    this.ringSize = ringSize;
    this.batch = [];
    this.batchSlots = 0;
    this.pending = [];
    this.chainEntries.fill(undefined);
    this.headOf.fill(-1);
    const v = this.view;
    const version = v.getUint16(VERSION_AT, true);
    const used = this.readUsed(USED_IDX_AT, USED_WRAP_AT);
    const old = this.readUsed(OLD_USED_IDX_AT, OLD_USED_WRAP_AT);
    if (version !== VERSION || used === undefined || old === undefined) {
      if (version !== 0) this.log.warn({ queue: this.index, version }, 'inflight region of an unknown version or position; its records are dropped');
      this.initialise({ pos: (frontEndBase >>> 16) & 0x7fff, wrap: frontEndBase >>> 31 === 1 });
      return undefined;
    }
    v.setUint16(DESC_NUM_AT, this.entries, true);
    this.used = this.repairLastPublish(used, old, slotUsed);
    const chains = this.collect();
    // Renumbered in order, so new chains count on from them whatever the region held.
    chains.forEach((c, k) => this.writeCounter(c.entries[0], k + 1));
    this.counter = chains.length + 1;
    const claimed = new Uint8Array(this.entries);
    for (const c of chains) {
      for (const e of c.entries) claimed[e] = 1;
      this.chainEntries[c.entries[0]] = c.entries;
      if (c.saved.id < this.entries) this.headOf[c.saved.id] = c.entries[0];
    }
    this.free = [];
    for (let e = this.entries - 1; e >= 0; e--) if (claimed[e] === 0) this.free.push(e);
    this.freeHead = v.getUint16(FREE_HEAD_AT, true);
    this.pending = chains.map((c) => c.saved);
    const held = chains.reduce((n, c) => n + c.entries.length, 0);
    const avail = this.advance(this.used, held);
    const base = (avail.pos | (avail.wrap ? 0x8000 : 0) | (this.used.pos << 16) | (this.used.wrap ? 0x8000_0000 : 0)) >>> 0;
    return { base, chains: [...this.pending] };
  }

  private readUsed(idxAt: number, wrapAt: number): UsedPosition | undefined {
    const pos = this.view.getUint16(idxAt, true);
    const wrap = this.view.getUint8(wrapAt);
    if (pos >= this.ringSize || wrap > 1) return undefined;
    return { pos, wrap: wrap === 1 };
  }

  private writeUsed(idxAt: number, wrapAt: number, p: UsedPosition): void {
    this.view.setUint16(idxAt, p.pos, true);
    this.view.setUint8(wrapAt, p.wrap ? 1 : 0);
  }

  private initialise(used: UsedPosition): void {
    const v = this.view;
    new Uint8Array(v.buffer, v.byteOffset, v.byteLength).fill(0);
    v.setUint16(VERSION_AT, VERSION, true);
    v.setUint16(DESC_NUM_AT, this.entries, true);
    v.setUint16(FREE_HEAD_AT, this.entries, true);
    v.setUint16(OLD_FREE_HEAD_AT, this.entries, true);
    this.writeUsed(USED_IDX_AT, USED_WRAP_AT, used);
    this.writeUsed(OLD_USED_IDX_AT, OLD_USED_WRAP_AT, used);
    this.used = used;
    this.freeHead = this.entries;
    this.counter = 1;
    this.free = [];
    for (let e = this.entries - 1; e >= 0; e--) this.free.push(e);
  }

  /**
   * A publish was prepared (used_idx moved) but not committed. If the ring shows the slot at
   * the old position used, the used descriptors reached the driver: commit, clearing the chains
   * linked from free_head until they cover the slots the used position moved by (entries are
   * reused, so no entry index can mark the end of the batch; and at most every entry, as a
   * hostile link may loop). Otherwise they never did: roll back, and those chains are served again.
   */
  private repairLastPublish(used: UsedPosition, old: UsedPosition, slotUsed: (pos: number, wrap: boolean) => boolean): UsedPosition {
    const v = this.view;
    if (used.pos === old.pos && used.wrap === old.wrap) return used;
    if (!slotUsed(old.pos, old.wrap)) {
      this.writeUsed(USED_IDX_AT, USED_WRAP_AT, old);
      v.setUint16(FREE_HEAD_AT, v.getUint16(OLD_FREE_HEAD_AT, true), true);
      return old;
    }
    const span = 2 * this.ringSize;
    const moved = (extended(used, this.ringSize) - extended(old, this.ringSize) + span) % span;
    let head = v.getUint16(FREE_HEAD_AT, true);
    let covered = 0;
    for (let n = 0; n < this.entries && covered < moved; n++) {
      const last = head < this.entries ? v.getUint16(this.at(head, LAST_AT), true) : this.entries;
      if (last >= this.entries) {
        this.log.warn({ queue: this.index, head }, 'inflight batch link out of range; repair stopped');
        break;
      }
      v.setUint8(this.at(head, INFLIGHT_AT), 0);
      covered += v.getUint16(this.at(head, NUM_AT), true);
      head = v.getUint16(this.at(last, NEXT_AT), true);
    }
    v.setUint16(OLD_FREE_HEAD_AT, v.getUint16(FREE_HEAD_AT, true), true);
    this.writeUsed(OLD_USED_IDX_AT, OLD_USED_WRAP_AT, used);
    return used;
  }

  /** The chains the record holds in flight, oldest first, each with its entries and descriptor copies. */
  private collect(): { entries: number[]; saved: SavedChain; counter: bigint }[] {
    const v = this.view;
    const claimed = new Uint8Array(this.entries);
    const found: { entries: number[]; saved: SavedChain; counter: bigint }[] = [];
    for (let first = 0; first < this.entries; first++) {
      const flag = v.getUint8(this.at(first, INFLIGHT_AT));
      if (flag === 0) continue;
      const chain = flag === 1 ? this.readChain(first, claimed) : undefined;
      if (chain === undefined) {
        this.log.warn({ queue: this.index, entry: first, flag }, 'inflight entry that no request of this ring can have; dropped');
        v.setUint8(this.at(first, INFLIGHT_AT), 0);
        continue;
      }
      for (const e of chain) claimed[e] = 1;
      const descriptors: RingDescriptor[] = chain.map((e) => ({
        addr: Number(v.getBigUint64(this.at(e, ADDR_AT), true)),
        len: v.getUint32(this.at(e, LEN_AT), true),
        id: v.getUint16(this.at(e, ID_AT), true),
        flags: v.getUint16(this.at(e, FLAGS_AT), true),
      }));
      found.push({ entries: chain, saved: { id: descriptors[descriptors.length - 1].id, descriptors }, counter: v.getBigUint64(this.at(first, COUNTER_AT), true) });
    }
    // Equal counters (a garbled region) keep entry order; every order is as good as another then.
    found.sort((a, b) => (a.counter < b.counter ? -1 : a.counter > b.counter ? 1 : a.entries[0] - b.entries[0]));
    // More ring slots in flight than the ring has: the newest records cannot be true.
    let slots = 0;
    const kept = found.filter((c) => (slots += c.entries.length) <= this.ringSize);
    for (const c of found.slice(kept.length)) {
      this.log.warn({ queue: this.index, entry: c.entries[0] }, 'inflight chains span more slots than the ring; dropped');
      v.setUint8(this.at(c.entries[0], INFLIGHT_AT), 0);
    }
    return kept;
  }

  /** The entries of the chain recorded at `first`, or undefined when its count or links cannot be. */
  private readChain(first: number, claimed: Uint8Array): number[] | undefined {
    const v = this.view;
    const num = v.getUint16(this.at(first, NUM_AT), true);
    if (num < 1 || num > this.ringSize) return undefined;
    const chain = [first];
    let e = first;
    while (chain.length < num) {
      e = v.getUint16(this.at(e, NEXT_AT), true);
      if (e >= this.entries || claimed[e] !== 0 || chain.includes(e)) return undefined;
      chain.push(e);
    }
    return claimed[first] === 0 ? chain : undefined;
  }

  private advance(p: UsedPosition, slots: number): UsedPosition {
    const pos = p.pos + slots;
    return pos >= this.ringSize ? { pos: pos - this.ringSize, wrap: !p.wrap } : { pos, wrap: p.wrap };
  }

  private writeCounter(entry: number, counter: number): void {
    const at = this.at(entry, COUNTER_AT);
    this.view.setUint32(at, counter >>> 0, true);
    this.view.setUint32(at + 4, Math.floor(counter / 2 ** 32), true);
  }

  nextResubmit(): SavedChain | undefined {
    return this.pending.shift();
  }

  get hasPending(): boolean {
    return this.pending.length > 0;
  }

  /**
   * Copy the chain's descriptors into free entries, then its counter, then the inflight flag: a
   * crash before the flag leaves entries nobody claims. Chains in flight span at most the ring's
   * slots, which the entries cover, so only a driver that reuses slots not yet used runs out.
   */
  taken(chain: DescriptorChain, descriptors: readonly RingDescriptor[]): void {
    const n = descriptors.length;
    if (n === 0 || n > this.free.length || chain.id >= this.entries) {
      throw new VirtqueueError('ring overrun', `inflight record of ring ${this.index}: no room for a chain of ${n} descriptors`);
    }
    const v = this.view;
    const taken = this.free.splice(this.free.length - n, n).reverse();
    for (let k = 0; k < n; k++) {
      const e = taken[k];
      const d = descriptors[k];
      v.setBigUint64(this.at(e, ADDR_AT), BigInt(d.addr), true);
      v.setUint32(this.at(e, LEN_AT), d.len, true);
      v.setUint16(this.at(e, ID_AT), d.id, true);
      v.setUint16(this.at(e, FLAGS_AT), d.flags, true);
      if (k + 1 < n) v.setUint16(this.at(e, NEXT_AT), taken[k + 1], true);
    }
    const first = taken[0];
    v.setUint16(this.at(first, NUM_AT), n, true);
    v.setUint16(this.at(first, LAST_AT), taken[n - 1], true);
    this.writeCounter(first, this.counter++);
    v.setUint8(this.at(first, INFLIGHT_AT), 1);
    this.chainEntries[first] = taken;
    this.headOf[chain.id] = first;
  }

  /** The newest chain taken was given back: its flag goes first, so a crash after it leaves entries nobody claims. */
  untaken(chain: DescriptorChain): void {
    const first = chain.id < this.entries ? this.headOf[chain.id] : -1;
    if (first === -1) return;
    this.view.setUint8(this.at(first, INFLIGHT_AT), 0);
    this.headOf[chain.id] = -1;
    this.free.push(...this.chainEntries[first]!.reverse());
    this.chainEntries[first] = undefined;
  }

  /** Its entries stay in flight, as recovery found them. */
  unresubmitted(saved: SavedChain): void {
    this.pending.unshift(saved);
  }

  /** The ring stopped with nothing owed: the record is cleared, and the next start takes the front-end's position. */
  clear(): void {
    new Uint8Array(this.view.buffer, this.view.byteOffset, this.view.byteLength).fill(0);
  }

  /** Link the chain into the batch from free_head; it stays in flight until the batch is committed. */
  returned(chain: DescriptorChain): void {
    const first = chain.id < this.entries ? this.headOf[chain.id] : -1;
    if (first === -1) return;
    this.headOf[chain.id] = -1;
    const entries = this.chainEntries[first]!;
    const v = this.view;
    v.setUint16(this.at(entries[entries.length - 1], NEXT_AT), this.freeHead, true);
    this.freeHead = first;
    v.setUint16(FREE_HEAD_AT, first, true);
    this.batch.push(first);
    this.batchSlots += entries.length;
  }

  /** Prepare: used_idx moves past the batch before the ring shows it. */
  publishing(): void {
    if (this.batch.length === 0) return;
    this.writeUsed(USED_IDX_AT, USED_WRAP_AT, this.advance(this.used, this.batchSlots));
  }

  /** Commit: the batch's chains are no longer in flight, their entries free again, old_* caught up. */
  published(): void {
    if (this.batch.length === 0) return;
    const v = this.view;
    for (const first of this.batch) {
      v.setUint8(this.at(first, INFLIGHT_AT), 0);
      this.free.push(...this.chainEntries[first]!);
      this.chainEntries[first] = undefined;
    }
    this.used = this.advance(this.used, this.batchSlots);
    v.setUint16(OLD_FREE_HEAD_AT, this.freeHead, true);
    this.writeUsed(OLD_USED_IDX_AT, OLD_USED_WRAP_AT, this.used);
    this.batch = [];
    this.batchSlots = 0;
  }
}
