/**
 * Split virtqueues (§2.7): the device side, the driver side, and the ring layout both share.
 */
export { SplitDeviceQueue } from './split/device.ts';
export { SplitDriverQueue, indirectTablesBytes, type IndirectTables, type SplitDriverOptions } from './split/driver.ts';
export {
  needEvent,
  placeRingAreas,
  placeSplitRing,
  splitRingLayout,
  mapSplitRing,
  usedRingIndex,
  type RingArea,
  type SplitRingLayout,
} from './split/layout.ts';
