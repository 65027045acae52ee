/**
 * Every device type paravirt implements, by name. Adding a device is its folder under
 * src/devices/ and one line here (docs/architecture.md, "Adding a device").
 */
import { balloonType } from './balloon/descriptor.ts';
import { blkType } from './blk/descriptor.ts';
import { consoleType } from './console/descriptor.ts';
import type { DeviceType } from './device-type.ts';
import { gpuType } from './gpu/descriptor.ts';
import { inputType } from './input/descriptor.ts';
import { netType } from './net/descriptor.ts';
import { rngType } from './rng/descriptor.ts';
import { rtcType } from './rtc/descriptor.ts';
import { scsiType } from './scsi/descriptor.ts';
import { vsockType } from './vsock/descriptor.ts';

export const DEVICE_TYPES: readonly DeviceType[] = [balloonType, blkType, consoleType, gpuType, inputType, netType, rngType, rtcType, scsiType, vsockType];

/** The registered type called `name`, or undefined. */
export function deviceType(name: string): DeviceType | undefined {
  return DEVICE_TYPES.find((t) => t.name === name);
}
