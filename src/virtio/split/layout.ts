/**
 * Where a split virtqueue's three areas live and how their fields are reached (§2.7): the
 * descriptor table, the available ring (driver area) and the used ring (device area). Both sides
 * resolve the areas once, into typed arrays over guest memory, so that the per-chain path reads
 * and writes ring fields by index with no address translation.
 */
import { DESC_SIZE, MAX_QUEUE_SIZE } from '../constants.ts';
import type { GuestMemory } from '../memory.ts';
import { VirtqueueError, type QueueAddresses, type QueueConfig } from '../queue.ts';

/** §2.7.6 / §2.7.7: VIRTQ_AVAIL_F_NO_INTERRUPT in the available ring's flags. */
export const AVAIL_F_NO_INTERRUPT = 1;
/** §2.7.8 / §2.7.10: VIRTQ_USED_F_NO_NOTIFY in the used ring's flags. */
export const USED_F_NO_NOTIFY = 1;

/** 16-bit word indices of the fields shared by both rings: flags, then idx (§2.7.6, §2.7.8). */
export const RING_FLAGS = 0;
export const RING_IDX = 1;
/** 16-bit word index of avail->ring[0]. */
export const AVAIL_RING = 2;

/** One area of a ring: its size in bytes and minimum alignment. */
export interface RingArea {
  readonly size: number;
  readonly align: number;
}

export interface SplitRingLayout {
  readonly desc: RingArea;
  readonly driver: RingArea;
  readonly device: RingArea;
}

/** The size and alignment of each area of a split ring of `size` entries (the table in §2.7). */
export function splitRingLayout(size: number): SplitRingLayout {
  checkQueueSize(size, 'split ring');
  return {
    desc: { size: DESC_SIZE * size, align: 16 },
    driver: { size: 6 + 2 * size, align: 2 },
    device: { size: 6 + 8 * size, align: 4 },
  };
}

/**
 * Lay a split ring's areas out one after another from `start`, each at its alignment: the
 * addresses to put in a QueueConfig, and `end`, the first byte after the ring.
 */
export function placeSplitRing(start: number, size: number): QueueAddresses & { readonly end: number } {
  return placeRingAreas(splitRingLayout(size), start);
}

/** Lay any ring's three areas (split or packed, same shape) out one after another from `start`. */
export function placeRingAreas(layout: SplitRingLayout, start: number): QueueAddresses & { readonly end: number } {
  const desc = alignUp(start, layout.desc.align);
  const driver = alignUp(desc + layout.desc.size, layout.driver.align);
  const device = alignUp(driver + layout.driver.size, layout.device.align);
  return { desc, driver, device, end: device + layout.device.size };
}

function alignUp(addr: number, align: number): number {
  return Math.ceil(addr / align) * align;
}

/**
 * Typed-array views of one split ring. Guest rings are little-endian and the views use host
 * order, which mapSplitRing() checks is little-endian too.
 */
export interface SplitRingViews {
  /** The descriptor table as 32-bit words, four per descriptor: addr low, addr high, len, flags | next << 16. */
  readonly desc: Uint32Array;
  /** The available ring as 16-bit words: flags, idx, ring[size], used_event. */
  readonly avail: Uint16Array;
  /** The used ring as 16-bit words: flags, idx, the elements, then avail_event at usedAvailEvent(size). */
  readonly used16: Uint16Array;
  /** The used ring as 32-bit words: element i is id at 1 + 2i, len at 2 + 2i. */
  readonly used32: Uint32Array;
}

/** 16-bit word index of used_event in the available ring (§2.7.6). */
export function availUsedEvent(size: number): number {
  return AVAIL_RING + size;
}

/** 16-bit word index of avail_event in the used ring (§2.7.8). */
export function usedAvailEvent(size: number): number {
  return 2 + 4 * size;
}

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Check a queue's size and the placement of its areas, and resolve them into views. Each area
 * must be aligned as §2.7 requires and lie wholly inside one guest memory region.
 */
export function mapSplitRing(memory: GuestMemory, config: QueueConfig, name: string): SplitRingViews {
  if (!HOST_LITTLE_ENDIAN) throw new RangeError('split rings need a little-endian host');
  checkQueueSize(config.size, name);
  const layout = splitRingLayout(config.size);
  const desc = area(memory, config.desc, layout.desc, 'descriptor table', name);
  const avail = area(memory, config.driver, layout.driver, 'available ring', name);
  const used = area(memory, config.device, layout.device, 'used ring', name);
  return {
    desc: new Uint32Array(desc.buffer, desc.byteOffset, desc.length / 4),
    avail: new Uint16Array(avail.buffer, avail.byteOffset, avail.length / 2),
    used16: new Uint16Array(used.buffer, used.byteOffset, used.length / 2),
    // The trailing avail_event is 16 bits wide, so the 32-bit view stops before it.
    used32: new Uint32Array(used.buffer, used.byteOffset, (used.length - 2) / 4),
  };
}

function checkQueueSize(size: number, name: string): void {
  if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
    throw new VirtqueueError('bad queue size', `${name}: ${size} is not a power of two from 1 to ${MAX_QUEUE_SIZE} (§2.7)`);
  }
}

function area(memory: GuestMemory, addr: number, layout: RingArea, what: string, name: string): Uint8Array {
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % layout.align !== 0) {
    throw new VirtqueueError(
      'misaligned ring area',
      `${name}: ${what} at 0x${addr.toString(16)} is not a multiple of ${layout.align} (§2.7)`,
    );
  }
  const bytes = memory.trySlice(addr, layout.size);
  if (bytes === undefined) {
    throw new VirtqueueError(
      'ring area outside guest memory',
      `${name}: ${what} (${layout.size} bytes at 0x${addr.toString(16)}) is not inside one guest memory region`,
    );
  }
  // Typed arrays need their element alignment on the host too; a region mapped at an odd host
  // offset cannot hold an aligned ring without copying, which the ring protocol forbids.
  const element = Math.min(layout.align, 4);
  if (bytes.byteOffset % element !== 0) {
    throw new RangeError(`${name}: ${what} at 0x${addr.toString(16)} is not ${element}-aligned in host memory`);
  }
  return bytes;
}

/** used->idx as the views show it: the index the device last published (acquire). */
export function usedRingIndex(views: SplitRingViews): number {
  return Atomics.load(views.used16, RING_IDX);
}

/**
 * vring_need_event (§2.7.7, §2.7.10): whether moving a ring index from `old` to `now` (16-bit,
 * wrapping) wrote the entry at index `event`, that is the other side asked to be notified.
 */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}
