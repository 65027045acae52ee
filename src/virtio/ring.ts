/**
 * The one place that knows there are two ring layouts: it builds the split (§2.7) or packed
 * (§2.8) implementation of the queue contract for either side, says which sizes each allows,
 * and lays out a driver's ring memory.
 */
import { MAX_QUEUE_SIZE } from './constants.ts';
import type { GuestMemory } from './memory.ts';
import type { DmaAllocator } from './driver.ts';
import type { DeviceQueue, DriverQueue, QueueAddresses, QueueConfig } from './queue.ts';
import { SplitDeviceQueue, SplitDriverQueue, splitRingLayout } from './split-ring.ts';
import type { IndirectTables, SplitRingLayout } from './split-ring.ts';
import { PackedDeviceQueue, PackedDriverQueue, packedRingLayout } from './packed-ring.ts';

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

/**
 * The device side of a queue the driver configured. Both rings check the size and placement
 * (each area aligned and inside one guest memory region) and throw VirtqueueError when the
 * driver got them wrong.
 */
export function createDeviceQueue(
  memory: GuestMemory,
  config: QueueConfig,
  packed: boolean,
  name: string,
  base?: number,
): DeviceQueue {
  return packed
    ? new PackedDeviceQueue(memory, config, name, base)
    : new SplitDeviceQueue(memory, config, name, base);
}

/**
 * The driver side of a queue whose areas the caller placed (see allocateRing); with indirect
 * descriptors negotiated, `indirectTables` lets it place multi-segment buffers in one slot.
 */
export function createDriverQueue<T>(
  memory: GuestMemory,
  config: QueueConfig,
  packed: boolean,
  name: string,
  indirectTables?: IndirectTables,
): DriverQueue<T> {
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
