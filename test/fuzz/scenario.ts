/**
 * What a hostile driver does in one fuzz case, as data fast-check generates and shrinks: a device
 * configuration, then a sequence of actions mixing raw ring and register writes with well-formed
 * requests. Values are drawn with a bias towards the edges where validation lives (lengths near
 * 0, 16 and 2^32, addresses at region ends, above 2^53, next indices at the queue size).
 */
import fc from 'fast-check';
import type { FuzzProfile, ProbeSeed } from '../../src/devices/device-type.ts';
import { DEVICE_TYPES } from '../../src/devices/registry.ts';
import { MmioReg } from '../../src/transports/mmio/registers.ts';
import { DATA_BYTES, RING_BYTES } from './guarded-memory.ts';

/** Every queue of every registered device type that the fuzzer attacks, from the registry. */
export const PROFILES: readonly FuzzProfile[] = (await Promise.all(DEVICE_TYPES.map((t) => t.fuzz()))).flat();

/** The profile called `name` ("blk requestq"); a scenario names its profile so a printed case replays. */
export function profileNamed(name: string): FuzzProfile {
  const p = PROFILES.find((x) => x.name === name);
  if (p === undefined) throw new RangeError(`no fuzz profile "${name}"; there are: ${PROFILES.map((x) => x.name).join(', ')}`);
  return p;
}

export interface Target {
  /** The FuzzProfile attacked: a device type's queue. */
  readonly profile: string;
  readonly packed: boolean;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly inOrder: boolean;
  readonly queueSize: number;
  /** Microtask turns each back-end call takes (a disk's), so requests overlap later actions. */
  readonly backendDelay: number;
}

/** Where a descriptor points, resolved to a guest address when written. */
export type AddrChoice =
  /** `offset` bytes into the data region (up to its end, so a range may run off it). */
  | { readonly kind: 'data'; readonly offset: number }
  /** Indirect table slot `index` (see TABLE_SLOTS), where an `indirect` action writes tables. */
  | { readonly kind: 'table'; readonly index: number }
  /** `offset` bytes into the ring region: descriptors pointing at the rings themselves. */
  | { readonly kind: 'ring'; readonly offset: number }
  /** Any 64-bit value, as two 32-bit halves. */
  | { readonly kind: 'raw'; readonly lo: number; readonly hi: number };

export interface RawDesc {
  readonly addr: AddrChoice;
  readonly len: number;
  /** All 16 flag bits; on a packed ring AVAIL/USED are replaced unless the action lies about them. */
  readonly flags: number;
  /** Split: the next field. Packed: the buffer id. */
  readonly next: number;
}

/**
 * How a chain is made available. Split: `entry` is the head written into the available ring
 * (undefined: the chain's own head) and `advance` how far avail->idx moves (1 normally; 0 writes
 * the entry without publishing, anything else is an index jump). Packed: `lie` replaces the
 * AVAIL/USED bits of every descriptor with one of the four patterns instead of the available one.
 */
export interface Publish {
  readonly entry: number | undefined;
  readonly advance: number;
  readonly lie: number | undefined;
}

/**
 * A well-formed request, checked to complete correctly whenever the device is still running:
 * what it asks is the profile's to make of `seed`, how it is laid out in descriptors is the
 * scenario's.
 */
export interface ValidRequest {
  readonly seed: ProbeSeed;
  /** How many descriptors each part is split into (capped by what the ring can hold). */
  readonly readParts: number;
  readonly writeParts: number;
  /** Put the descriptors in an indirect table, when negotiated. */
  readonly indirect: boolean;
}

/** One step of the driver in the mmio register order virtio-mmio sets a device up (§4.2.3). */
export const INIT_STEPS = [
  'reset',
  'acknowledge',
  'driver',
  'features',
  'featuresOk',
  'queueSize',
  'queueAreas',
  'queueReady',
  'driverOk',
] as const;
export type InitStep = (typeof INIT_STEPS)[number];

export type Action =
  | { readonly op: 'chain'; readonly start: number; readonly descs: readonly RawDesc[]; readonly publish: Publish; readonly kick: boolean }
  /** Write an indirect table at a table slot and make one descriptor pointing at it available. */
  | {
      readonly op: 'indirect';
      readonly index: number;
      readonly entries: readonly RawDesc[];
      /** The indirect descriptor's len; undefined: the table's true size. */
      readonly len: number | undefined;
      /** NEXT/WRITE (and other) bits set beside INDIRECT. */
      readonly extraFlags: number;
      readonly publish: Publish;
      readonly kick: boolean;
    }
  /** A chain whose next fields go round in a circle of `length` descriptors. */
  | { readonly op: 'loop'; readonly start: number; readonly length: number; readonly kick: boolean }
  | { readonly op: 'scribble'; readonly area: 'desc' | 'driver' | 'device'; readonly offset: number; readonly bytes: Uint8Array }
  | { readonly op: 'reg'; readonly offset: number; readonly width: 1 | 2 | 4; readonly value: number }
  /** A notification for `queue`, or for the attacked queue when undefined. */
  | { readonly op: 'notify'; readonly queue: number | undefined }
  /** Let asynchronous completions run. */
  | { readonly op: 'drain' }
  | { readonly op: 'valid'; readonly request: ValidRequest }
  /** On an event queue: the host has one event for the device to deliver (nothing on a request queue). */
  | { readonly op: 'produce'; readonly seed: ProbeSeed }
  /** Reset and set the device up again properly, as a recovering driver does. */
  | { readonly op: 'reset' }
  /** Set the device up with steps left out or in the wrong order. */
  | { readonly op: 'scrambledInit'; readonly steps: readonly InitStep[] };

export interface Scenario {
  readonly target: Target;
  readonly actions: readonly Action[];
  /** Reset and set up again whenever the device needs reset, as a driver does, and go on attacking. */
  readonly recover: boolean;
  /** The request that must complete after the garbage (and after a reset). */
  readonly final: ValidRequest;
}

/** Indirect table slots: 64 places 64 bytes apart in the second half of the data region. */
export const TABLE_SLOTS = 64;
export const TABLE_AREA_OFFSET = DATA_BYTES / 2;
export const TABLE_SLOT_BYTES = 64;

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u16 = fc.integer({ min: 0, max: 0xffff });

const addrChoice: fc.Arbitrary<AddrChoice> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('data' as const), offset: fc.integer({ min: 0, max: DATA_BYTES }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('table' as const), index: fc.integer({ min: 0, max: TABLE_SLOTS - 1 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('ring' as const), offset: fc.integer({ min: 0, max: RING_BYTES }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('raw' as const), lo: u32, hi: u32 }) },
  {
    weight: 1,
    // 0, 2^53 - 1, 2^53, 2^53 + 1, 2^63 and 2^64 - 1: the edges of what a number can hold exactly.
    arbitrary: fc.constantFrom(
      ...[
        [0, 0],
        [0xffff_ffff, 0x1f_ffff],
        [0, 0x20_0000],
        [1, 0x20_0000],
        [0, 0x8000_0000],
        [0xffff_ffff, 0xffff_ffff],
      ].map(([lo, hi]) => ({ kind: 'raw' as const, lo, hi })),
    ),
  },
);

const len: fc.Arbitrary<number> = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 1100 }) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(0, 1, 15, 16, 17, 32, 48, 512, 513, DATA_BYTES, DATA_BYTES + 1, 0x7fff_ffff, 0x8000_0000, 0xffff_fff0, 0xffff_ffff),
  },
  { weight: 1, arbitrary: u32 },
);

const flags: fc.Arbitrary<number> = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 7 }) },
  { weight: 1, arbitrary: u16 },
);

const next: fc.Arbitrary<number> = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 17 }) },
  { weight: 1, arbitrary: fc.constantFrom(255, 256, 257, 0x7fff, 0x8000, 0xffff) },
  { weight: 1, arbitrary: u16 },
);

export const rawDesc: fc.Arbitrary<RawDesc> = fc.record({ addr: addrChoice, len, flags, next });

const publish: fc.Arbitrary<Publish> = fc.record({
  entry: fc.oneof({ weight: 6, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.oneof(fc.integer({ min: 0, max: 17 }), u16) }),
  advance: fc.oneof(
    { weight: 8, arbitrary: fc.constant(1) },
    { weight: 1, arbitrary: fc.constantFrom(0, 2, 3, 255, 256, 257, 0x8000, 0xffff) },
    { weight: 1, arbitrary: u16 },
  ),
  lie: fc.oneof({ weight: 6, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 3 }) }),
});

const slot = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 17 }) }, { weight: 1, arbitrary: u16 });

const probeSeed: fc.Arbitrary<ProbeSeed> = fc.record({
  choice: fc.nat({ max: 15 }),
  a: fc.nat({ max: 0xffff }),
  b: fc.nat({ max: 0xffff }),
  fill: fc.integer({ min: 1, max: 255 }),
});

export const validRequest: fc.Arbitrary<ValidRequest> = fc.record({
  seed: probeSeed,
  readParts: fc.integer({ min: 1, max: 2 }),
  writeParts: fc.integer({ min: 1, max: 2 }),
  indirect: fc.boolean(),
});

const REGISTERS = Object.values(MmioReg);

const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 10,
    arbitrary: fc.record({
      op: fc.constant('chain' as const),
      start: slot,
      descs: fc.array(rawDesc, { minLength: 1, maxLength: 6 }),
      publish,
      kick: fc.boolean(),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('indirect' as const),
      index: fc.integer({ min: 0, max: TABLE_SLOTS - 1 }),
      entries: fc.array(rawDesc, { maxLength: 8 }),
      len: fc.option(len, { freq: 3, nil: undefined }),
      extraFlags: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(0, 0, 2) }, { weight: 1, arbitrary: u16 }),
      publish,
      kick: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('loop' as const), start: slot, length: fc.integer({ min: 1, max: 4 }), kick: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('scribble' as const),
      area: fc.constantFrom('desc' as const, 'driver' as const, 'device' as const),
      offset: u16,
      bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('reg' as const),
      offset: fc.oneof({ weight: 3, arbitrary: fc.constantFrom(...REGISTERS) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0x1ff }) }),
      width: fc.constantFrom(4 as const, 4 as const, 2 as const, 1 as const),
      value: fc.oneof(fc.integer({ min: 0, max: 0x100 }), u32),
    }),
  },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('notify' as const), queue: fc.oneof({ weight: 6, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: u32 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'drain' as const }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('valid' as const), request: validRequest }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('produce' as const), seed: probeSeed }) },
  { weight: 1, arbitrary: fc.constant({ op: 'reset' as const }) },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('scrambledInit' as const),
      steps: fc.shuffledSubarray([...INIT_STEPS], { minLength: 1 }),
    }),
  },
);

/** Queue sizes: tiny ones make every index collide; 256 is the devices' maximum. */
function queueSize(profile: FuzzProfile, packed: boolean): fc.Arbitrary<number> {
  const min = profile.minQueueSize;
  const sizes = packed ? [3, 5, 7, 16, 17, 256] : [4, 8, 16, 256];
  return fc.constantFrom(...[min, 2, ...sizes].filter((s) => s >= min));
}

/** Targets among `profiles` (default every registered one). */
export function target(profiles: readonly FuzzProfile[] = PROFILES): fc.Arbitrary<Target> {
  return fc
    .record({
      profile: fc.constantFrom(...profiles),
      packed: fc.boolean(),
      eventIdx: fc.boolean(),
      indirect: fc.boolean(),
      inOrder: fc.boolean(),
    })
    .chain(({ profile, ...t }) =>
      fc.record({ queueSize: queueSize(profile, t.packed), backendDelay: fc.integer({ min: 0, max: 6 }) }).map((more) => ({
        ...t,
        ...more,
        profile: profile.name,
      })),
    );
}

/** Scenarios against `profiles` (default every registered one). */
export function scenario(profiles: readonly FuzzProfile[] = PROFILES): fc.Arbitrary<Scenario> {
  return fc.record({
    target: target(profiles),
    actions: fc.array(action, { maxLength: 14 }),
    recover: fc.boolean(),
    final: validRequest,
  });
}
