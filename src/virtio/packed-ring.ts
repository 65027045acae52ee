/**
 * Packed virtqueues (§2.8), both halves of the queue contract: PackedDeviceQueue for a device,
 * PackedDriverQueue for a driver, and the layout of the ring's three areas.
 */
export { PackedDeviceQueue } from './packed/device-queue.ts';
export { PackedDriverQueue, type PackedDriverOptions } from './packed/driver-queue.ts';
export {
  PACKED_FRESH_BASE,
  RingEventFlags,
  packedRingLayout,
  mapPackedRing,
  slotUsedSince,
  type PackedRingLayout,
  type RingArea,
} from './packed/ring.ts';
