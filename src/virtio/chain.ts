/**
 * Rules every descriptor chain obeys whatever the ring layout (§2.7.4.2, §2.7.5.3, §2.8.6, §2.8.7):
 * each buffer lies inside guest memory, device-writable descriptors follow all device-readable
 * ones, the total length fits in 32 bits (the used element's len field), and a chain is no longer
 * than the ring (split) or the indirect table, which also bounds loops; a table holds at most the
 * ring size or INDIRECT_TABLE_MIN_LIMIT entries, whichever is larger. The rings walk descriptors
 * and feed them here; the builder does the checks and produces the DescriptorChain.
 */
import { DescriptorChain, VirtqueueError } from './queue.ts';
import type { GuestMemory } from './memory.ts';
import { FRONT_END_MAX_QUEUE_SIZE } from './constants.ts';

const U32_MAX = 0xffff_ffff;
/**
 * The part of a chain that has no descriptors, shared by every such chain. A part starts as this
 * and becomes an array sized to its first buffer, which saves allocating (and growing) two arrays
 * per chain on the per-chain path.
 */
const NONE: Uint8Array[] = [];

export class ChainBuilder {
  private readable = NONE;
  private writable = NONE;
  private readableLength = 0;
  private writableLength = 0;
  private count = 0;

  constructor(
    private readonly memory: GuestMemory,
    private readonly queueName: string,
  ) {}

  /** Start a new chain (the builder is reused to keep the per-chain path allocation-light). */
  reset(): void {
    this.readable = NONE;
    this.writable = NONE;
    this.readableLength = 0;
    this.writableLength = 0;
    this.count = 0;
  }

  /**
   * Add one data descriptor. `limit` is the most descriptors this chain may hold (the queue size,
   * or the indirect table's entry count): a longer chain is a loop or garbage.
   */
  add(addr: number, len: number, deviceWritable: boolean, limit: number): void {
    if (++this.count > limit) {
      throw new VirtqueueError('chain too long', `${this.queueName}: more than ${limit} descriptors (loop?)`);
    }
    const buf = this.memory.trySlice(addr, len);
    if (buf === undefined) {
      throw new VirtqueueError(
        'buffer outside guest memory',
        `${this.queueName}: ${len} bytes at 0x${addr.toString(16)}`,
      );
    }
    if (deviceWritable) {
      this.writableLength += len;
      if (this.writableLength > U32_MAX) {
        throw new VirtqueueError('chain length overflow', `${this.queueName}: writable part exceeds 4 GiB`);
      }
      if (this.writable === NONE) this.writable = [buf];
      else this.writable.push(buf);
    } else {
      if (this.writable.length > 0) {
        throw new VirtqueueError(
          'readable after writable',
          `${this.queueName}: a device-readable descriptor follows a device-writable one`,
        );
      }
      this.readableLength += len;
      if (this.readableLength > U32_MAX) {
        throw new VirtqueueError('chain length overflow', `${this.queueName}: readable part exceeds 4 GiB`);
      }
      if (this.readable === NONE) this.readable = [buf];
      else this.readable.push(buf);
    }
  }

  /** Finish the chain; `ringDescriptors` is how many ring slots it took. */
  build(id: number, ringDescriptors: number): DescriptorChain {
    return new DescriptorChain(
      id,
      ringDescriptors,
      this.readable,
      this.writable,
      this.readableLength,
      this.writableLength,
    );
  }
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
