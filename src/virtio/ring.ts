/**
 * The one place that knows there are two ring layouts: it builds the split (§2.7) or packed
 * (§2.8) implementation of the queue contract for either side, says which sizes each allows,
 * and lays out a driver's ring memory.
 */
import { Feature, MAX_QUEUE_SIZE, hasFeature } from './constants.ts';
import type { GuestMemory } from './memory.ts';
import type { DmaAllocator } from './driver.ts';
import type { QueueAddresses, QueueConfig, ResubmittingQueue } from './queue.ts';
import { SplitDeviceQueue, SplitDriverQueue, mapSplitRing, splitRingLayout, usedRingIndex } from './split-ring.ts';
import type { IndirectTables, SplitRingLayout } from './split-ring.ts';
import { PackedDeviceQueue, PackedDriverQueue, mapPackedRing, packedRingLayout, slotUsedSince } from './packed-ring.ts';

/** The size and alignment of a queue's three areas, in the order of QueueAddresses. */
export type RingLayout = SplitRingLayout;

/** The areas a queue of `size` entries needs; `size` must be valid (see queueSizeError). */
export function ringLayout(size: number, packed: boolean): RingLayout {
  return packed ? packedRingLayout(size) : splitRingLayout(size);
}

/**
 * Why `size` is not a usable queue size, or undefined: 1..max, and a power of two for a split
 * ring (§2.7 "Queue Size value is always a power of 2"; §2.8 packed rings allow any size).
 */
export function queueSizeError(size: number, packed: boolean, max = MAX_QUEUE_SIZE): string | undefined {
  if (!Number.isInteger(size) || size < 1) return `queue size ${size} is not a positive integer`;
  if (size > max) return `queue size ${size} exceeds the maximum ${max}`;
  if (!packed && (size & (size - 1)) !== 0) return `queue size ${size} is not a power of two (split ring)`;
  return undefined;
}

const AREAS = ['desc', 'driver', 'device'] as const;

/** Whether the negotiated `features` put every queue on a packed ring (VIRTIO_F_RING_PACKED, §2.8). */
export function isPackedRing(features: bigint): boolean {
  return hasFeature(features, Feature.RING_PACKED);
}

/**
 * What one queue of `size` entries at `areas` runs with under the negotiated `features`: the one
 * place where ring features (§6) become queue options, for device and driver sides alike.
 */
export function negotiatedQueueConfig(features: bigint, size: number, areas: QueueAddresses): QueueConfig {
  return {
    size,
    desc: areas.desc,
    driver: areas.driver,
    device: areas.device,
    eventIdx: hasFeature(features, Feature.EVENT_IDX),
    indirect: hasFeature(features, Feature.INDIRECT_DESC),
    inOrder: hasFeature(features, Feature.IN_ORDER),
  };
}

/**
 * The device side of a queue the driver configured. Both rings check the size and placement
 * (each area aligned and inside one guest memory region) and throw VirtqueueError when the
 * driver got them wrong. `base` resumes a ring (see DeviceQueue.base).
 */
export function createDeviceQueue(
  memory: GuestMemory,
  config: QueueConfig,
  packed: boolean,
  name: string,
  base?: number,
): ResubmittingQueue {
  return packed
    ? new PackedDeviceQueue(memory, config, name, base)
    : new SplitDeviceQueue(memory, config, name, base);
}

/**
 * What guest memory says of a split ring a device restarts on: used->idx, the index the device
 * last published (§2.7.8). Throws VirtqueueError when the ring is misplaced.
 */
export function splitUsedIndex(memory: GuestMemory, config: QueueConfig, name: string): number {
  return usedRingIndex(mapSplitRing(memory, config, name));
}

/**
 * What guest memory says of a packed ring a device restarts on: whether the slot at `pos`, which
 * the driver made available in the lap of wrap counter `wrap`, no longer holds that available
 * descriptor — a used descriptor was written over it, and the driver may even have made the slot
 * available again for the next lap (§2.8.1). Throws VirtqueueError when the ring is misplaced.
 */
export function packedSlotUsed(memory: GuestMemory, config: QueueConfig, name: string, pos: number, wrap: boolean): boolean {
  return slotUsedSince(mapPackedRing(memory, config, name), pos, wrap);
}

/**
 * The driver side of a queue whose areas the caller placed (see allocateRing); with indirect
 * descriptors negotiated, `indirectTables` lets it place multi-segment buffers in one slot.
 * Typed as the two classes rather than DriverQueue: both can also list their tokens in flight.
 */
export function createDriverQueue<T>(
  memory: GuestMemory,
  config: QueueConfig,
  packed: boolean,
  name: string,
  indirectTables?: IndirectTables,
): SplitDriverQueue<T> | PackedDriverQueue<T> {
  const options = { indirectTables };
  return packed
    ? new PackedDriverQueue<T>(memory, config, name, options)
    : new SplitDriverQueue<T>(memory, config, name, options);
}

/**
 * Allocate and zero (§4.2.3.2 step 4) the three areas of a queue from `dma`. Returns undefined
 * (having freed any partial allocation) when the allocator is exhausted.
 */
export function allocateRing(
  dma: DmaAllocator,
  memory: GuestMemory,
  size: number,
  packed: boolean,
): QueueAddresses | undefined {
  const layout = ringLayout(size, packed);
  const placed: number[] = [];
  for (const area of AREAS) {
    const addr = dma.alloc(layout[area].size, layout[area].align);
    if (addr === undefined) {
      for (const a of placed) dma.free(a);
      return undefined;
    }
    memory.slice(addr, layout[area].size).fill(0);
    placed.push(addr);
  }
  return { desc: placed[0], driver: placed[1], device: placed[2] };
}
