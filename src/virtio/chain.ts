/**
 * Rules every descriptor chain obeys whatever the ring layout (§2.7.4.2, §2.7.5.3, §2.8.6, §2.8.7):
 * each buffer lies inside guest memory, device-writable descriptors follow all device-readable
 * ones, the total length fits in 32 bits (the used element's len field), and a chain is no longer
 * than the ring (split) or the indirect table, which also bounds loops; a table holds at most the
 * ring size or INDIRECT_TABLE_MIN_LIMIT entries, whichever is larger. The rings walk descriptors
 * and feed them here; the builder does the checks and fills the DescriptorChain.
 */
import { DescriptorChain, VirtqueueError } from './queue.ts';
import type { GuestMemory } from './memory.ts';
import { FRONT_END_MAX_QUEUE_SIZE } from './constants.ts';

const U32_MAX = 0xffff_ffff;

/** The builder's view of a chain record: the fields the contract shows devices as read-only. */
type ChainRecord = { -readonly [K in keyof DescriptorChain]: DescriptorChain[K] };

/**
 * Walks feed descriptors in, the builder checks them and fills the queue's record of the chain.
 * A queue has one record per chain id (a split ring's head, a packed ring's buffer id), made on
 * first use and reused each time that id is popped again, so the per-chain path allocates no
 * chain and no segment list, only the views of guest memory. A record is refilled only by
 * build(), which the queue calls once it knows the id is not in flight: a chain a device holds is
 * never written while it holds it (DeviceQueue.pop).
 */
export class ChainBuilder {
  /**
   * The lists being built. build() swaps them with the record's, so a record keeps the lists of
   * the chain it names and the builder fills the lists of an earlier chain, long returned.
   */
  private readable: Uint8Array[] = [];
  private writable: Uint8Array[] = [];
  private readableCount = 0;
  private writableCount = 0;
  private readableLength = 0;
  private writableLength = 0;
  private count = 0;
  private readonly records: (ChainRecord | undefined)[];
  /**
   * Per ring slot: the view last made for a descriptor there and that descriptor's address. A
   * driver that puts the same buffer in the same slot again (fixed buffers per slot, as DPDK's
   * and this project's drivers often do) gets the same view back instead of a new one; a view is
   * an immutable window on guest memory, so chains may share it.
   */
  private readonly slotViews: (Uint8Array | undefined)[];
  private readonly slotAddrs: Float64Array;

  constructor(
    private readonly memory: GuestMemory,
    private readonly queueName: string,
    /** Chain ids the queue hands out (0 .. ids - 1), which is also its ring slots. */
    ids: number,
  ) {
    this.records = new Array<ChainRecord | undefined>(ids).fill(undefined);
    this.slotViews = new Array<Uint8Array | undefined>(ids).fill(undefined);
    this.slotAddrs = new Float64Array(ids);
  }

  /** Start a new chain (the builder is reused to keep the per-chain path allocation-free). */
  reset(): void {
    this.readableCount = 0;
    this.writableCount = 0;
    this.readableLength = 0;
    this.writableLength = 0;
    this.count = 0;
  }

  /**
   * Add one data descriptor. `limit` is the most descriptors this chain may hold (the queue size,
   * or the indirect table's entry count): a longer chain is a loop or garbage. `slot` is the ring
   * slot the descriptor sits in, or -1 for an indirect table's entry.
   */
  add(addr: number, len: number, deviceWritable: boolean, limit: number, slot = -1): void {
    if (++this.count > limit) {
      throw new VirtqueueError('chain too long', `${this.queueName}: more than ${limit} descriptors (loop?)`);
    }
    let buf: Uint8Array;
    if (slot < 0) {
      buf = this.view(addr, len);
    } else {
      const cached = this.slotViews[slot];
      // Same address and length: the same bytes, as guest memory does not change under a queue.
      if (cached !== undefined && this.slotAddrs[slot] === addr && cached.length === len) {
        buf = cached;
      } else {
        buf = this.view(addr, len);
        this.slotViews[slot] = buf;
        this.slotAddrs[slot] = addr;
      }
    }
    if (deviceWritable) {
      this.writableLength += len;
      if (this.writableLength > U32_MAX) {
        throw new VirtqueueError('chain length overflow', `${this.queueName}: writable part exceeds 4 GiB`);
      }
      this.writableCount = put(this.writable, this.writableCount, buf);
    } else {
      if (this.writableCount > 0) {
        throw new VirtqueueError(
          'readable after writable',
          `${this.queueName}: a device-readable descriptor follows a device-writable one`,
        );
      }
      this.readableLength += len;
      if (this.readableLength > U32_MAX) {
        throw new VirtqueueError('chain length overflow', `${this.queueName}: readable part exceeds 4 GiB`);
      }
      this.readableCount = put(this.readable, this.readableCount, buf);
    }
  }

  private view(addr: number, len: number): Uint8Array {
    const buf = this.memory.trySlice(addr, len);
    if (buf === undefined) {
      throw new VirtqueueError(
        'buffer outside guest memory',
        `${this.queueName}: ${len} bytes at 0x${addr.toString(16)}`,
      );
    }
    return buf;
  }

  /**
   * Finish the chain as the record of `id` (below the `ids` given at construction), which the
   * caller checked is not in flight; `ringDescriptors` is how many ring slots it took.
   */
  build(id: number, ringDescriptors: number): DescriptorChain {
    let chain = this.records[id];
    if (chain === undefined) {
      chain = new DescriptorChain(id, 0, [], [], 0, 0);
      this.records[id] = chain;
    }
    const readable = this.readable;
    const writable = this.writable;
    // Views beyond the count belong to an earlier, longer chain: drop them.
    if (readable.length !== this.readableCount) readable.length = this.readableCount;
    if (writable.length !== this.writableCount) writable.length = this.writableCount;
    this.readable = chain.readable as Uint8Array[];
    this.writable = chain.writable as Uint8Array[];
    chain.readable = readable;
    chain.writable = writable;
    chain.id = id;
    chain.ringDescriptors = ringDescriptors;
    chain.readableLength = this.readableLength;
    chain.writableLength = this.writableLength;
    return chain;
  }
}

/** Store `buf` at index `n` of `list`, growing it only past its length; returns the new count. */
function put(list: Uint8Array[], n: number, buf: Uint8Array): number {
  if (n < list.length) list[n] = buf;
  else list.push(buf);
  return n + 1;
}

/**
 * Most entries an indirect table may hold, however small the ring. §2.7.5.3.1 asks drivers for
 * chains no longer than the queue size, but a Linux virtio_blk driver puts seg_max + 2
 * descriptors in one table whatever ring size the front-end chose (drivers/virtio/virtio_ring.c
 * bounds a table by nothing but the request). QEMU and libvhost-user likewise bound a table by
 * its own length (len / 16, §2.7.5.3), up to VIRTQUEUE_MAX_SIZE buffers. A ring larger than this
 * allows its own size.
 */
export const INDIRECT_TABLE_MIN_LIMIT = FRONT_END_MAX_QUEUE_SIZE;

/**
 * Check an indirect descriptor (§2.7.5.3.1 / §2.8.7): only when negotiated, not nested, its
 * table a non-zero multiple of 16 bytes and at most the larger of `queueSize` and
 * INDIRECT_TABLE_MIN_LIMIT entries. Returns the entry count.
 */
export function indirectTableEntries(
  queueName: string,
  len: number,
  negotiated: boolean,
  nested: boolean,
  queueSize: number,
): number {
  if (!negotiated) {
    throw new VirtqueueError('indirect not negotiated', `${queueName}: INDIRECT flag without VIRTIO_F_INDIRECT_DESC`);
  }
  if (nested) throw new VirtqueueError('nested indirect', `${queueName}: indirect descriptor inside an indirect table`);
  if (len === 0 || len % 16 !== 0) {
    throw new VirtqueueError('bad indirect table length', `${queueName}: ${len} is not a non-zero multiple of 16`);
  }
  const entries = len / 16;
  const maxEntries = Math.max(queueSize, INDIRECT_TABLE_MIN_LIMIT);
  if (entries > maxEntries) {
    throw new VirtqueueError('indirect table too long', `${queueName}: ${entries} entries, at most ${maxEntries}`);
  }
  return entries;
}
