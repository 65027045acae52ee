/**
 * What a hostile device does in one driver fuzz case, as data fast-check generates and shrinks:
 * the identity it shows during initialization (device id, features, FEATURES_OK, queue count and
 * sizes, configuration space), then a sequence of moves while the driver runs — operations the
 * driver's user starts, honest answers interleaved with used-ring lies, spurious interrupts,
 * configuration changes, DEVICE_NEEDS_RESET.
 */
import fc from 'fast-check';
import { pino } from 'pino';
import type { DeviceType, DriverFuzzProfile, ProbeSeed } from '../../src/devices/device-type.ts';
import { DEVICE_TYPES } from '../../src/devices/registry.ts';
import { Feature, featureBit } from '../../src/virtio/constants.ts';
import { FRAMEWORK_FEATURES } from '../../src/virtio/features.ts';
import { CORE_PROFILE } from './core-profile.ts';
import { HostileDevice, type RingArea, type UsedLie } from './hostile-device.ts';

const silentLog = pino({ level: 'silent' });

/** A driver profile with what names it: "core" (the generic driver core) or a device type's name. */
export interface NamedDriverProfile extends DriverFuzzProfile {
  readonly name: string;
  readonly deviceId: number;
}

/** Every device-specific bit a type names, which an honest device of the type may offer. */
function namedFeatures(t: DeviceType): bigint {
  return Object.keys(t.featureNames).reduce((bits, n) => bits | featureBit(Number(n)), 0n);
}

/** A type without a driver profile: its guest half opened and closed, its buffers answered with random bytes. */
function openOnly(t: DeviceType): DriverFuzzProfile {
  const size = t.config?.size ?? 0;
  return {
    features: namedFeatures(t),
    queues: t.queues.length,
    config: (seed) => new Uint8Array(size).fill(seed.fill),
    async open(transport, log) {
      const driver = await t.guest.open(transport, log);
      return { operate: async () => {}, close: () => driver.close() };
    },
  };
}

/** The generic driver core first, then every registered device type's guest half. */
export const DRIVER_PROFILES: readonly NamedDriverProfile[] = [
  CORE_PROFILE,
  ...(await Promise.all(
    DEVICE_TYPES.map(async (t) => ({ ...(t.driverFuzz === undefined ? openOnly(t) : await t.driverFuzz()), name: t.name, deviceId: t.deviceId })),
  )),
];

/**
 * Load every driver's modules now (descriptors import them lazily), by opening each against a
 * device of no known id: a case counts the turns an open takes, and loading a module from disk
 * is not the driver's doing.
 */
await Promise.allSettled(
  DRIVER_PROFILES.map((p) =>
    p.open(
      new HostileDevice({ deviceId: -1, features: 0n, acceptFeatures: false, numQueues: 0, maxSizes: [0], config: new Uint8Array(0), unsettledReads: 0 }),
      silentLog,
    ),
  ),
);

export function driverProfileNamed(name: string): NamedDriverProfile {
  const p = DRIVER_PROFILES.find((x) => x.name === name);
  if (p === undefined) throw new RangeError(`no driver fuzz profile "${name}"; there are: ${DRIVER_PROFILES.map((x) => x.name).join(', ')}`);
  return p;
}

/** What the device shows during initialization; each part honest or a lie. */
export interface IdentityChoice {
  /** Another device's id instead of the profile's. */
  readonly wrongId: boolean;
  /** VERSION_1 left out (a legacy device). */
  readonly legacy: boolean;
  /** Ring features offered (a subset of what the framework implements). */
  readonly ringFeatures: bigint;
  /** Which of the profile's device features are offered (a mask over them). */
  readonly deviceMask: bigint;
  /** Further bits in 0..63 offered, which no driver asked for. */
  readonly extra: bigint;
  readonly acceptFeatures: boolean;
  /** undefined: the profile's count. */
  readonly numQueues: number | undefined;
  readonly maxSizes: readonly number[];
  /** undefined: the profile's honest configuration; else these bytes, any length. */
  readonly config: Uint8Array | undefined;
  readonly configSeed: ProbeSeed;
  readonly unsettledReads: number;
}

export type DeviceMove =
  /** The driver's user starts one operation. */
  | { readonly op: 'operate'; readonly seed: ProbeSeed }
  /** Answer up to `count` available buffers of an enabled queue honestly. */
  | { readonly op: 'serve'; readonly queue: number; readonly count: number; readonly seed: ProbeSeed }
  /** Write a used element the device makes up. */
  | { readonly op: 'lie'; readonly queue: number; readonly lie: UsedLie }
  /** Overwrite bytes of a queue's area, the driver's descriptor table and available ring included. */
  | { readonly op: 'scribble'; readonly queue: number; readonly area: RingArea; readonly offset: number; readonly bytes: Uint8Array }
  /** A used-buffer notification with nothing new, for any queue index. */
  | { readonly op: 'interrupt'; readonly queue: number }
  /** A configuration change: the honest space again (new seed) or raw bytes; generations that take `unsettledReads` to settle. */
  | { readonly op: 'config'; readonly bytes: Uint8Array | undefined; readonly seed: ProbeSeed; readonly unsettledReads: number }
  | { readonly op: 'needsReset' }
  /** Let the event loop run `turns` turns. */
  | { readonly op: 'wait'; readonly turns: number };

export interface DriverScenario {
  readonly profile: string;
  readonly identity: IdentityChoice;
  readonly moves: readonly DeviceMove[];
}

const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });

export const probeSeed: fc.Arbitrary<ProbeSeed> = fc.record({
  choice: fc.nat({ max: 15 }),
  a: fc.nat({ max: 0xffff }),
  b: fc.nat({ max: 0xffff }),
  fill: fc.integer({ min: 1, max: 255 }),
});

/** Bits of `mask`, each kept or not. */
function subsetOf(mask: bigint): fc.Arbitrary<bigint> {
  const bits: bigint[] = [];
  for (let b = 0n; b < 64n; b++) if (mask & (1n << b)) bits.push(1n << b);
  return fc.subarray(bits).map((s) => s.reduce((x, y) => x | y, 0n));
}

function identity(profile: NamedDriverProfile): fc.Arbitrary<IdentityChoice> {
  const rare = <T>(honest: T, lie: fc.Arbitrary<T>): fc.Arbitrary<T> =>
    fc.oneof({ weight: 12, arbitrary: fc.constant(honest) }, { weight: 1, arbitrary: lie });
  return fc.record({
    wrongId: rare(false, fc.constant(true)),
    legacy: rare(false, fc.constant(true)),
    ringFeatures: subsetOf(FRAMEWORK_FEATURES & ~featureBit(Feature.VERSION_1)),
    deviceMask: fc.oneof({ weight: 3, arbitrary: fc.constant(profile.features) }, { weight: 2, arbitrary: subsetOf(profile.features) }),
    extra: rare(0n, fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })),
    acceptFeatures: rare(true, fc.constant(false)),
    // The whole 16-bit range (queue_select is 16 bits): a driver sets up the queues it chose from
    // its features and configuration, never one per queue the device claims.
    numQueues: rare(undefined, fc.oneof(fc.integer({ min: 0, max: 9 }), fc.constantFrom(300, 0xffff), u16)),
    maxSizes: fc.oneof(
      { weight: 4, arbitrary: fc.constant([256]) },
      { weight: 3, arbitrary: fc.array(fc.constantFrom(1, 2, 3, 4, 5, 8, 16, 64, 256), { minLength: 1, maxLength: 3 }) },
      { weight: 1, arbitrary: fc.array(fc.oneof(fc.constantFrom(0, 255, 257, 0x8000, 0xffff), u16), { minLength: 1, maxLength: 3 }) },
    ),
    config: rare(undefined, fc.uint8Array({ maxLength: 300 })),
    configSeed: probeSeed,
    unsettledReads: rare(0, fc.oneof(fc.integer({ min: 1, max: 3 }), fc.constant(1000))),
  });
}

export const usedLie: fc.Arbitrary<UsedLie> = fc.record({
  id: fc.oneof(
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('inFlight' as const), index: fc.nat({ max: 7 }) }) },
    {
      weight: 2,
      arbitrary: fc.record({ kind: fc.constant('raw' as const), value: fc.oneof(fc.nat({ max: 300 }), fc.constantFrom(0xffff, 0x8000, 0xffff_ffff), u32) }),
    },
  ),
  len: fc.oneof(fc.nat({ max: 8 }), fc.constantFrom(0x7fff_ffff, 0xffff_ffff), u32),
  past: fc.boolean(),
  advance: fc.oneof({ weight: 5, arbitrary: fc.constant(1) }, { weight: 2, arbitrary: fc.constantFrom(0, 2, 3, 257, 0x8000, 0xffff) }, { weight: 1, arbitrary: u16 }),
  flags: fc.oneof(fc.constantFrom(0, 0x80, 0x8000, 0x8080), u16),
  rightLap: fc.boolean(),
});

const queueChoice = fc.nat({ max: 7 });

const move: fc.Arbitrary<DeviceMove> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('operate' as const), seed: probeSeed }) },
  { weight: 8, arbitrary: fc.record({ op: fc.constant('serve' as const), queue: queueChoice, count: fc.integer({ min: 1, max: 300 }), seed: probeSeed }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('lie' as const), queue: queueChoice, lie: usedLie }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('scribble' as const),
      queue: queueChoice,
      area: fc.constantFrom('desc' as const, 'driver' as const, 'device' as const),
      offset: u16,
      bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('interrupt' as const), queue: fc.oneof(queueChoice, u32) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('config' as const),
      bytes: fc.option(fc.uint8Array({ maxLength: 300 }), { nil: undefined }),
      seed: probeSeed,
      unsettledReads: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(1, 2, 1000) }),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ op: 'needsReset' as const }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('wait' as const), turns: fc.integer({ min: 1, max: 4 }) }) },
);

/** Scenarios against `profiles` (default every one). */
export function driverScenario(profiles: readonly NamedDriverProfile[] = DRIVER_PROFILES): fc.Arbitrary<DriverScenario> {
  return fc.constantFrom(...profiles).chain((p) =>
    fc.record({
      profile: fc.constant(p.name),
      identity: identity(p),
      moves: fc.array(move, { maxLength: 24 }),
    }),
  );
}
