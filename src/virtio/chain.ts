/**
 * Rules every descriptor chain obeys whatever the ring layout (§2.7.4.2, §2.7.5.3, §2.8.6, §2.8.7):
 * each buffer lies inside guest memory, device-writable descriptors follow all device-readable
 * ones, the total length fits in 32 bits (the used element's len field), and a chain is no longer
 * than the ring (split) or the indirect table, which also bounds loops; a table holds at most the
 * ring size or INDIRECT_TABLE_MIN_LIMIT entries, whichever is larger. The rings walk descriptors
 * and feed them here; the builder does the checks and fills the DescriptorChain.
 */
import { ChainSegments, DescriptorChain, VirtqueueError } from './queue.ts';
import { ViewCache, type GuestMemory, type RegionSpan } from './memory.ts';
import { FRONT_END_MAX_QUEUE_SIZE } from './constants.ts';

const U32_MAX = 0xffff_ffff;

/**
 * Walks feed descriptors in, the builder checks them and fills the queue's record of the chain.
 * A queue has one record per chain id (a split ring's head, a packed ring's buffer id), made on
 * first use and reused each time that id is popped again, and a descriptor becomes a span of its
 * region's bytes (ChainSegments), not a view: the per-chain path allocates nothing, whatever
 * buffer a driver puts in a ring slot. A record is refilled only by build(), which the queue calls
 * once it knows the id is not in flight: a chain a device holds is never written while it holds
 * it (DeviceQueue.pop).
 */
export class ChainBuilder {
  /**
   * The segments being built. build() swaps them with the record's, so a record keeps the
   * segments of the chain it names and the builder fills those of an earlier chain, long returned.
   */
  private segs = new ChainSegments();
  private readableLength = 0;
  private writableLength = 0;
  private readonly records: (DescriptorChain | undefined)[];
  /** The views this queue's chains hand out, shared by all of them (ChainReader.view). */
  private readonly cache = new ViewCache();

  constructor(
    private readonly memory: GuestMemory,
    private readonly queueName: string,
    /** Chain ids the queue hands out (0 .. ids - 1). */
    ids: number,
  ) {
    this.records = new Array<DescriptorChain | undefined>(ids).fill(undefined);
  }

  /** Start a new chain (the builder is reused to keep the per-chain path allocation-free). */
  reset(): void {
    // Segments that came from a record made without it (build()) get the queue's cache here.
    this.segs.cache = this.cache;
    this.segs.count = 0;
    this.segs.readableCount = 0;
    this.readableLength = 0;
    this.writableLength = 0;
  }

  /**
   * Add one data descriptor. `limit` is the most descriptors this chain may hold (the queue size,
   * or the indirect table's entry count): a longer chain is a loop or garbage.
   */
  add(addr: number, len: number, deviceWritable: boolean, limit: number): void {
    const segs = this.segs;
    if (segs.count >= limit) {
      throw new VirtqueueError('chain too long', `${this.queueName}: more than ${limit} descriptors (loop?)`);
    }
    const region = this.locate(addr, len);
    if (deviceWritable) {
      this.writableLength += len;
      if (this.writableLength > U32_MAX) {
        throw new VirtqueueError('chain length overflow', `${this.queueName}: writable part exceeds 4 GiB`);
      }
    } else {
      if (segs.count > segs.readableCount) {
        throw new VirtqueueError(
          'readable after writable',
          `${this.queueName}: a device-readable descriptor follows a device-writable one`,
        );
      }
      this.readableLength += len;
      if (this.readableLength > U32_MAX) {
        throw new VirtqueueError('chain length overflow', `${this.queueName}: readable part exceeds 4 GiB`);
      }
      segs.readableCount++;
    }
    // locate() checked that [addr, addr+len) lies in the region, so the span stays inside its bytes.
    segs.put(region.bytes, addr - region.start, len);
  }

  /**
   * The region holding a descriptor's buffer, [addr, addr+len); throws when any byte of it lies
   * outside guest memory. For a chain of one descriptor: locate it, make the last checks that may
   * fail, then fill the record with single().
   */
  locate(addr: number, len: number): RegionSpan {
    const region = this.memory.locate(addr, len);
    if (region === undefined) throw outsideMemory(this.queueName, addr, len);
    return region;
  }

  /**
   * Fill the record of `id` (checked as for build()) with a chain that is one direct descriptor
   * taking one ring slot, the common case, whose buffer locate() found in `region`. None of
   * add()'s other checks can fail for one descriptor: the limit is at least one, a 32-bit length
   * cannot overflow the 32-bit totals, and nothing precedes it. The record is filled in place
   * (it is not in flight, so nothing reads it), the builder's own segments untouched.
   */
  single(id: number, region: RegionSpan, addr: number, len: number, deviceWritable: boolean): DescriptorChain {
    const chain = this.records[id] ?? this.record(id);
    chain.refillOne(id, this.cache, region.bytes, addr - region.start, len, deviceWritable);
    return chain;
  }

  /** The record of `id`, made on its first use. */
  private record(id: number): DescriptorChain {
    const chain = new DescriptorChain(id, 0, [], [], 0, 0);
    this.records[id] = chain;
    return chain;
  }

  /**
   * Finish the chain as the record of `id` (below the `ids` given at construction), which the
   * caller checked is not in flight; `ringDescriptors` is how many ring slots it took.
   */
  build(id: number, ringDescriptors: number): DescriptorChain {
    const chain = this.records[id] ?? this.record(id);
    this.segs = chain.refill(id, ringDescriptors, this.segs, this.readableLength, this.writableLength);
    return chain;
  }
}

/** Made out of line, so that locate() stays small enough to inline into a queue's pop(). */
function outsideMemory(queueName: string, addr: number, len: number): VirtqueueError {
  return new VirtqueueError('buffer outside guest memory', `${queueName}: ${len} bytes at 0x${addr.toString(16)}`);
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
