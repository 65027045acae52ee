/**
 * Inflight I/O tracking ("Inflight I/O tracking" in vhost-user.rst): shared memory the back-end
 * allocates (GET_INFLIGHT_FD) and the front-end keeps, and hands back to a restarted back-end
 * (SET_INFLIGHT_FD), in which the back-end records which requests it has taken from each ring
 * and not yet returned. After a crash, those are the requests to serve again.
 *
 * One region per ring, one after another, each laid out for split rings ("QueueRegionSplit",
 * inflight-split.ts) or packed rings ("QueueRegionPacked", inflight-packed.ts) as the features
 * negotiated before the region was allocated say (QEMU sets them first for this reason). A ring
 * runs behind an InflightQueue (inflight-queue.ts), which keeps its record as the device works.
 */
import type { Logger } from 'pino';
import { MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import type { QueueConfig } from '../../virtio/queue.ts';
import { packedSlotUsed, splitUsedIndex } from '../../virtio/ring.ts';
import { PACKED_DESC_SIZE, PACKED_HEADER_SIZE, PackedInflight } from './inflight-packed.ts';
import type { InflightRecord } from './inflight-queue.ts';
import { SPLIT_DESC_SIZE, SPLIT_HEADER_SIZE, SplitInflight } from './inflight-split.ts';

/** Each ring's region starts on a cache line, so rings served from different threads never share one. */
const QUEUE_ALIGN = 64;

/** Bytes one ring of `queueSize` entries takes in the region, padding included. */
export function inflightQueueBytes(queueSize: number, packed = false): number {
  const bytes = packed ? PACKED_HEADER_SIZE + PACKED_DESC_SIZE * queueSize : SPLIT_HEADER_SIZE + SPLIT_DESC_SIZE * queueSize;
  return Math.ceil(bytes / QUEUE_ALIGN) * QUEUE_ALIGN;
}

/** Why `numQueues` rings of `queueSize` entries cannot have a region, or undefined when they can. */
export function inflightShapeError(numQueues: number, queueSize: number, maxQueues: number): string | undefined {
  if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > maxQueues) {
    return `inflight region for ${numQueues} queues, not 1 to the device's ${maxQueues}`;
  }
  if (!Number.isInteger(queueSize) || queueSize < 1 || queueSize > MAX_QUEUE_SIZE) {
    return `inflight region for queues of ${queueSize} entries, not 1 to ${MAX_QUEUE_SIZE}`;
  }
  return undefined;
}

/** The whole region: `numQueues` ring regions of `queueSize` entries each, in one layout. */
export class InflightRegion {
  readonly queueBytes: number;

  constructor(
    private readonly bytes: Uint8Array,
    readonly numQueues: number,
    readonly queueSize: number,
    readonly packed = false,
  ) {
    this.queueBytes = inflightQueueBytes(queueSize, packed);
    if (bytes.length < numQueues * this.queueBytes) {
      throw new RangeError(`an inflight region of ${bytes.length} bytes cannot hold ${numQueues} queues of ${queueSize} entries`);
    }
  }

  static byteLength(numQueues: number, queueSize: number, packed = false): number {
    return numQueues * inflightQueueBytes(queueSize, packed);
  }

  private queueBytesOf(index: number): Uint8Array | undefined {
    if (index >= this.numQueues) return undefined;
    return this.bytes.subarray(index * this.queueBytes, (index + 1) * this.queueBytes);
  }

  /** The split-ring record of ring `index`, or undefined when the region has no room for it. */
  split(index: number, log: Logger): SplitInflight | undefined {
    const bytes = this.packed ? undefined : this.queueBytesOf(index);
    return bytes === undefined ? undefined : new SplitInflight(bytes, this.queueSize, index, log);
  }

  /** The packed-ring record of ring `index`, or undefined when the region has no room for it. */
  packedRecord(index: number, log: Logger): PackedInflight | undefined {
    const bytes = this.packed ? this.queueBytesOf(index) : undefined;
    return bytes === undefined ? undefined : new PackedInflight(bytes, this.queueSize, index, log);
  }

  /**
   * Ring `index`, configured as `config` over `memory`, starts at the front-end's `base`
   * (DeviceQueue.base form): repair its record and say where it resumes, or undefined when the
   * region cannot track it (it then runs untracked, from `base`). Heads still in flight after a
   * crash were taken from entries before the resume point, which the front-end cannot know (QEMU
   * sends the used index of a split ring as the base, and a stale position for a packed one).
   * `recovered` says the record was a predecessor's, which may have died between making used
   * buffers visible and notifying the driver. Throws VirtqueueError when the ring is misplaced.
   */
  resume(
    index: number,
    memory: GuestMemory,
    config: QueueConfig,
    packed: boolean,
    base: number,
    name: string,
    log: Logger,
  ): { base: number; record: InflightRecord; recovered: boolean } | undefined {
    const layout = (p: boolean): string => (p ? 'packed' : 'split');
    if (packed !== this.packed) {
      log.warn({ queue: index }, `the inflight region is laid out for ${layout(this.packed)} rings; this ${layout(packed)} ring runs untracked`);
      return undefined;
    }
    if (index >= this.numQueues || config.size > this.queueSize) {
      log.warn({ queue: index, size: config.size }, 'the inflight region has no room for this ring; it runs untracked');
      return undefined;
    }
    if (packed) {
      const record = this.packedRecord(index, log)!;
      const resumed = record.recover(config.size, base, (pos, wrap) => packedSlotUsed(memory, config, name, pos, wrap));
      if (resumed === undefined) return { base, record, recovered: false };
      log.info({ queue: index, resubmitting: resumed.chains.length, base: resumed.base }, 'ring resumes from its inflight record');
      return { base: resumed.base, record, recovered: true };
    }
    const record = this.split(index, log)!;
    const usedIdx = splitUsedIndex(memory, config, name);
    const heads = record.recover(config.size, usedIdx);
    if (heads === undefined) return { base, record, recovered: false };
    log.info({ queue: index, resubmitting: heads.length, usedIdx }, 'ring resumes from its inflight record');
    return { base: (usedIdx + heads.length) & 0xffff, record, recovered: true };
  }
}
