/**
 * Feature negotiation (§2.2) shared by both halves: which bits a side may offer or accept, the
 * check a device applies when the driver sets FEATURES_OK (§3.1.1 step 5-6), and names for log
 * and error messages.
 *
 * Bits 0-23 and 50-127 are device-type specific; bits 24-49 are reserved for the queue and
 * feature negotiation mechanisms (§6). A reserved bit changes how the transport or the rings
 * behave, so only the ones this framework implements may be offered or accepted.
 */
import { Feature, featureBit } from './constants.ts';

/** Reserved (§6) feature bits that the framework's rings and transports implement. */
export const FRAMEWORK_FEATURES: bigint =
  featureBit(Feature.VERSION_1) |
  featureBit(Feature.RING_PACKED) |
  featureBit(Feature.EVENT_IDX) |
  featureBit(Feature.INDIRECT_DESC) |
  featureBit(Feature.IN_ORDER);

/** §6: the reserved range 24..49; everything else in 0..63 is device-type specific. */
const RESERVED_MASK: bigint = ((1n << 50n) - 1n) & ~((1n << 24n) - 1n);
const U64_MASK = (1n << 64n) - 1n;

const RESERVED_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(Feature).map(([name, bit]) => [bit, name]),
);

/** A device type's table of feature bits (`{ FLUSH: 9, ... }`) as names by bit number, for messages. */
export function bitNames(bits: Readonly<Record<string, number>>): Readonly<Record<number, string>> {
  return Object.fromEntries(Object.entries(bits).map(([name, bit]) => [bit, name]));
}

/** Name of one feature bit: the §6 name for a reserved bit, else the device's name or "bit N". */
export function featureName(bit: number, deviceNames?: Readonly<Record<number, string>>): string {
  return RESERVED_NAMES.get(bit) ?? deviceNames?.[bit] ?? `bit ${bit}`;
}

/** The set bits of `features`, lowest first. */
export function featureBits(features: bigint): number[] {
  const bits: number[] = [];
  for (let bit = 0; features >> BigInt(bit) !== 0n; bit++) {
    if ((features >> BigInt(bit)) & 1n) bits.push(bit);
  }
  return bits;
}

/** "VERSION_1, RING_PACKED, bit 3" for messages; "none" for an empty set. */
export function describeFeatures(features: bigint, deviceNames?: Readonly<Record<number, string>>): string {
  const names = featureBits(features).map((b) => featureName(b, deviceNames));
  return names.length === 0 ? 'none' : names.join(', ');
}

/** A mask of feature bit numbers, each checked to be an integer 0..63. */
export function featureMask(bits: readonly number[]): bigint {
  let mask = 0n;
  for (const bit of bits) {
    if (!Number.isInteger(bit) || bit < 0 || bit > 63) {
      throw new RangeError(`feature bit ${bit} is not an integer from 0 to 63`);
    }
    mask |= featureBit(bit);
  }
  return mask;
}

/**
 * Check a feature set a side of this framework wants to offer (device) or support (driver):
 * 64 bits at most, and no reserved bit the framework does not implement. `who` names the side
 * in the error, e.g. "device rng".
 */
export function checkImplementable(features: bigint, who: string): void {
  if (features < 0n || features > U64_MASK) {
    throw new RangeError(`${who}: features 0x${features.toString(16)} do not fit in 64 bits`);
  }
  const unknown = features & RESERVED_MASK & ~FRAMEWORK_FEATURES;
  if (unknown !== 0n) {
    throw new RangeError(`${who}: feature ${describeFeatures(unknown)} is not implemented by the virtio framework`);
  }
}

/**
 * Why a device refuses FEATURES_OK for `accepted`, or undefined when it is acceptable: the
 * driver may accept only bits the device offered (§2.2.1) and a modern device requires
 * VERSION_1 (§6.1: a device without legacy support may fail FEATURES_OK without it).
 */
export function refuseFeatures(offered: bigint, accepted: bigint, deviceNames?: Readonly<Record<number, string>>): string | undefined {
  const extra = accepted & ~offered;
  if (extra !== 0n) return `driver accepted features the device did not offer: ${describeFeatures(extra, deviceNames)}`;
  if ((accepted & featureBit(Feature.VERSION_1)) === 0n) return 'driver did not accept VERSION_1';
  return undefined;
}

/**
 * A device type's feature dependency (§5.x "Feature bit requirements", e.g. §5.1.3.1): `feature`
 * needs every bit of `all` and, when given, at least one of `any`. A driver must not accept a
 * feature without what it requires (§2.2.1), and a device must not offer one so.
 */
export interface FeatureRequirement {
  readonly feature: number;
  readonly all?: readonly number[];
  readonly any?: readonly number[];
}

/** The first feature in `features` whose requirements are missing, as a sentence, or undefined. */
export function missingRequirement(
  features: bigint,
  requirements: readonly FeatureRequirement[],
  deviceNames?: Readonly<Record<number, string>>,
): string | undefined {
  const has = (bit: number): boolean => ((features >> BigInt(bit)) & 1n) === 1n;
  const name = (bit: number): string => featureName(bit, deviceNames);
  for (const { feature, all = [], any } of requirements) {
    if (!has(feature)) continue;
    const missing = all.find((b) => !has(b));
    if (missing !== undefined) return `${name(feature)} requires ${name(missing)}`;
    if (any !== undefined && !any.some(has)) return `${name(feature)} requires one of ${any.map(name).join(', ')}`;
  }
  return undefined;
}
