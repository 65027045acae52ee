/**
 * A split ring's record in the inflight region (inflight.ts), laid out as vhost-user.rst's
 * "QueueRegionSplit":
 *
 *     features u64 | version u16 | desc_num u16 | last_batch_head u16 | used_idx u16
 *     desc[desc_num]: inflight u8 | padding[5] | next u16 | counter u64
 *
 * The front-end owns the memory and may have written anything into it, and a crashed back-end
 * may have left it half-updated: recovery checks every head and count it reads, and an entry it
 * cannot make sense of is dropped with a log line, never trusted.
 */
import type { Logger } from 'pino';
import type { DescriptorChain, SavedChain } from '../../virtio/queue.ts';
import type { InflightRecord } from './inflight-queue.ts';

export const SPLIT_HEADER_SIZE = 16;
export const SPLIT_DESC_SIZE = 16;
const HEADER_SIZE = SPLIT_HEADER_SIZE;
const DESC_SIZE = SPLIT_DESC_SIZE;
/** The layout version this back-end writes; a region at 0 has never been used. */
const VERSION = 1;

/** Byte offsets in a ring's region. */
const VERSION_AT = 8;
const DESC_NUM_AT = 10;
const LAST_BATCH_HEAD_AT = 12;
const USED_IDX_AT = 14;
/** Byte offsets in one desc entry. */
const INFLIGHT_AT = 0;
const NEXT_AT = 6;
const COUNTER_AT = 8;

/**
 * One split ring's inflight record, kept in the order vhost-user.rst gives so that a crash
 * between any two steps leaves a record recover() can repair:
 *
 * - taking a chain: counter, then inflight = 1 (a half-written entry is simply not in flight);
 * - returning chains: each head linked into the batch (next = last_batch_head, last_batch_head =
 *   head) before the used index moves; after it moved, inflight = 0 for each, then used_idx.
 *   A crash after the used index moved but before used_idx caught up is repaired by walking
 *   the batch from last_batch_head.
 */
export class SplitInflight implements InflightRecord {
  private readonly view: DataView;
  /**
   * The next counter. A number, written as two 32-bit halves, keeps the per-request path free of
   * BigInt allocations; 2^53 requests are more than a ring sees.
   */
  private counter = 1;
  /** Heads returned since the last publish: the batch the next used index covers. */
  private readonly batch: Uint16Array;
  private batchLength = 0;
  /** Heads recover() found in flight, in the order they were taken, not yet handed out again. */
  private pending: number[] = [];

  constructor(
    bytes: Uint8Array,
    /** Entries the region has room for (desc_num as this back-end allocated or was told). */
    private readonly entries: number,
    private readonly index: number,
    private readonly log: Logger,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    this.batch = new Uint16Array(entries);
  }

  /**
   * Called when ring `index` starts with `usedIdx` in its used ring. A never-used region is
   * initialised and undefined returned: nothing to resubmit, and the front-end's ring base
   * stands. Otherwise the record is repaired against the used ring and the heads still in
   * flight are returned, oldest first: the ring must resume popping `returned.length` entries
   * past `usedIdx`, since those heads were taken from the entries just before.
   */
  recover(ringSize: number, usedIdx: number): readonly number[] | undefined {
    const v = this.view;
    const version = v.getUint16(VERSION_AT, true);
    if (version !== VERSION) {
      if (version !== 0) this.log.warn({ queue: this.index, version }, 'inflight region of an unknown version; its records are dropped');
      new Uint8Array(v.buffer, v.byteOffset, v.byteLength).fill(0);
      v.setUint16(VERSION_AT, VERSION, true);
      v.setUint16(DESC_NUM_AT, this.entries, true);
      v.setUint16(USED_IDX_AT, usedIdx, true);
      this.counter = 1;
      this.pending = [];
      this.batchLength = 0;
      return undefined;
    }
    v.setUint16(DESC_NUM_AT, this.entries, true);
    this.repairLastBatch(usedIdx);
    const found: { head: number; counter: bigint }[] = [];
    let newest = 0n;
    for (let head = 0; head < this.entries; head++) {
      const at = HEADER_SIZE + head * DESC_SIZE;
      const flag = v.getUint8(at + INFLIGHT_AT);
      if (flag === 0) continue;
      const counter = v.getBigUint64(at + COUNTER_AT, true);
      if (flag !== 1 || head >= ringSize) {
        this.log.warn({ queue: this.index, head, flag, ringSize }, 'inflight entry that no request of this ring can have; dropped');
        v.setUint8(at + INFLIGHT_AT, 0);
        continue;
      }
      found.push({ head, counter });
      if (counter > newest) newest = counter;
    }
    // Equal counters (a garbled region) keep head order; every order is as good as another then.
    found.sort((a, b) => (a.counter < b.counter ? -1 : a.counter > b.counter ? 1 : a.head - b.head));
    this.pending = found.map((f) => f.head);
    this.batchLength = 0;
    if (newest < BigInt(Number.MAX_SAFE_INTEGER)) {
      this.counter = Number(newest) + 1;
    } else {
      // Counters no ring reaches (a garbled region): number the heads afresh, in their order.
      this.pending.forEach((head, k) => this.writeCounter(head, k + 1));
      this.counter = this.pending.length + 1;
    }
    return [...this.pending];
  }

  /**
   * The used index moved past the last batch but used_idx did not follow: the crash came
   * between the two. The batch's heads are done; clear them, at most the distance the used
   * index moved and never more than the region holds (a hostile next chain may loop).
   */
  private repairLastBatch(usedIdx: number): void {
    const v = this.view;
    const done = (usedIdx - v.getUint16(USED_IDX_AT, true)) & 0xffff;
    let head = v.getUint16(LAST_BATCH_HEAD_AT, true);
    for (let n = 0; n < Math.min(done, this.entries); n++) {
      if (head >= this.entries) {
        this.log.warn({ queue: this.index, head }, 'inflight batch link out of range; repair stopped');
        break;
      }
      const at = HEADER_SIZE + head * DESC_SIZE;
      v.setUint8(at + INFLIGHT_AT, 0);
      head = v.getUint16(at + NEXT_AT, true);
    }
    v.setUint16(USED_IDX_AT, usedIdx, true);
  }

  /** The next head recover() found, to be handed out before any new chain; undefined when none is left. */
  nextResubmit(): SavedChain | undefined {
    const head = this.pending.shift();
    return head === undefined ? undefined : { id: head, descriptors: [] };
  }

  get hasPending(): boolean {
    return this.pending.length > 0;
  }

  /** A chain with head `head` was taken from the available ring. */
  taken(chain: Pick<DescriptorChain, 'id'>): void {
    const head = chain.id;
    this.writeCounter(head, this.counter++);
    this.view.setUint8(HEADER_SIZE + head * DESC_SIZE + INFLIGHT_AT, 1);
  }

  /** The newest chain taken was given back: its entry is no longer in flight (a crash now leaves nothing to resubmit for it). */
  untaken(chain: Pick<DescriptorChain, 'id'>): void {
    this.view.setUint8(HEADER_SIZE + chain.id * DESC_SIZE + INFLIGHT_AT, 0);
  }

  /** Its entry stays in flight, as recovery found it. */
  unresubmitted(saved: SavedChain): void {
    this.pending.unshift(saved.id);
  }

  private writeCounter(head: number, counter: number): void {
    const at = HEADER_SIZE + head * DESC_SIZE + COUNTER_AT;
    this.view.setUint32(at, counter >>> 0, true);
    this.view.setUint32(at + 4, Math.floor(counter / 2 ** 32), true);
  }

  /** The chain with head `head` was returned; it joins the batch the next used index publishes. */
  returned(chain: Pick<DescriptorChain, 'id'>): void {
    const head = chain.id;
    const v = this.view;
    v.setUint16(HEADER_SIZE + head * DESC_SIZE + NEXT_AT, v.getUint16(LAST_BATCH_HEAD_AT, true), true);
    v.setUint16(LAST_BATCH_HEAD_AT, head, true);
    // A driver can make a returned head available again before the device publishes, so a
    // batch may name a head twice; once the batch outgrows the ring, its heads are already kept.
    if (this.batchLength < this.batch.length) this.batch[this.batchLength] = head;
    this.batchLength++;
  }

  /** The ring stopped with nothing owed: the record is cleared, and the next start takes the front-end's base. */
  clear(): void {
    new Uint8Array(this.view.buffer, this.view.byteOffset, this.view.byteLength).fill(0);
  }

  /** The batch is already linked from last_batch_head: nothing to prepare before the used index moves. */
  publishing(): void {}

  /** The used index now covers the batch: its heads are no longer in flight. */
  published(): void {
    const n = this.batchLength;
    if (n === 0) return;
    const v = this.view;
    for (let k = 0; k < Math.min(n, this.batch.length); k++) v.setUint8(HEADER_SIZE + this.batch[k] * DESC_SIZE + INFLIGHT_AT, 0);
    v.setUint16(USED_IDX_AT, (v.getUint16(USED_IDX_AT, true) + n) & 0xffff, true);
    this.batchLength = 0;
  }
}
