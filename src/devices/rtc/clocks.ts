/**
 * The clocks a virtio-rtc device serves ("Clock Types"), each read from the host's clocks:
 *
 * - utc: CLOCK_REALTIME, which steps at a leap second as VIRTIO_RTC_CLOCK_UTC must;
 * - tai: CLOCK_TAI when the host kernel knows its TAI offset, otherwise CLOCK_REALTIME plus the
 *   offset of the leap-second table (a kernel nobody told the offset keeps CLOCK_TAI equal to
 *   CLOCK_REALTIME, which would be 37 s off);
 * - monotonic: CLOCK_BOOTTIME, physical time since the host booted, counting time it spent
 *   suspended, where CLOCK_MONOTONIC stops ("monotonic physical time (SI seconds subdivisions)");
 * - utc-smeared: UTC with leap seconds smeared noon to noon (VIRTIO_RTC_SMEAR_NOON_LINEAR),
 *   computed from TAI and the leap-second table. Linux gives only such a clock an RTC class
 *   device (/dev/rtcN, with the alarm), since a stepping RTC would upset its timekeeping.
 *
 * For testing how guests handle bad time, every clock can be served offset and rate-skewed:
 * reading = host + offset + (host − host at start) × ppm / 10^6. A positive rate factor keeps a
 * monotonic clock monotonic; readings are clamped to the le64 range.
 */
import { HostClock, readHostClock } from '../../native/clock.ts';
import type { ClockName } from './clock-names.ts';
import { type LeapTable, smearedUtcFromTai, taiOffsetAt } from './leap-seconds.ts';
import { ClockType, Smear, U64_MAX } from './wire.ts';

/** One clock as the device serves it. */
export interface RtcClock {
  readonly name: string;
  /** "Clock Types" value and "Smearing Variants" value answered to CLOCK_CAP. */
  readonly type: number;
  readonly smearing: number;
  /** Nanoseconds since the clock's epoch, now. */
  read(): bigint;
  /** Host nanoseconds until this clock, now at `now`, reads `target` (0 when it already has). */
  hostDelay(now: bigint, target: bigint): bigint;
}

/** The host's clocks in nanoseconds; tests substitute their own. */
export interface HostTime {
  realtime(): bigint;
  tai(): bigint;
  boottime(): bigint;
}

export const HOST_TIME: HostTime = {
  realtime: () => readHostClock(HostClock.REALTIME),
  tai: () => readHostClock(HostClock.TAI),
  boottime: () => readHostClock(HostClock.BOOTTIME),
};

export interface ClockOptions {
  readonly host?: HostTime;
  /** The leap-second table, needed by utc-smeared and by tai when the kernel's TAI offset is 0. */
  readonly leapSeconds?: LeapTable;
  /** Added to every reading, in nanoseconds (default 0). */
  readonly offsetNs?: bigint;
  /** Rate error in parts per million, above −10^6 (default 0). */
  readonly ratePpm?: number;
}

const NS = 1_000_000_000n;
const MILLION = 1_000_000n;

/** The kernel's TAI offset in whole seconds: CLOCK_TAI − CLOCK_REALTIME, read back to back. */
export function kernelTaiOffset(host: HostTime): number {
  const utc = host.realtime();
  const tai = host.tai();
  return Number((tai - utc + NS / 2n) / NS);
}

/** TAI in nanoseconds, from the kernel when it knows the offset, else from the table. */
function taiSource(host: HostTime, table: LeapTable | undefined): () => bigint {
  if (kernelTaiOffset(host) !== 0) return () => host.tai();
  if (table === undefined) {
    throw new Error('the tai and utc-smeared clocks need the TAI offset: the host kernel has none set (CLOCK_TAI equals CLOCK_REALTIME) and no leap-second table was given');
  }
  // Within a leap second itself CLOCK_REALTIME repeats a second; outside it this is exact.
  return () => {
    const utc = host.realtime();
    return utc + BigInt(taiOffsetAt(table, utc)) * NS;
  };
}

/** The clocks `names`, in that order (clock ids are their indices). */
export function makeClocks(names: readonly ClockName[], options: ClockOptions = {}): RtcClock[] {
  const host = options.host ?? HOST_TIME;
  const ppm = options.ratePpm ?? 0;
  if (!Number.isInteger(ppm) || ppm <= -1_000_000) throw new RangeError(`rate ${ppm} ppm is not an integer above -1000000`);
  const offset = options.offsetNs ?? 0n;
  const rate = BigInt(ppm);
  return names.map((name) => {
    const [type, smearing, base] = baseClock(name, host, options.leapSeconds);
    const anchor = base();
    const read = (): bigint => {
      const raw = base();
      const skewed = raw + offset + ((raw - anchor) * rate) / MILLION;
      return skewed < 0n ? 0n : skewed > U64_MAX ? U64_MAX : skewed;
    };
    const hostDelay = (now: bigint, target: bigint): bigint => (target <= now ? 0n : ((target - now) * MILLION) / (MILLION + rate));
    return { name, type, smearing, read, hostDelay };
  });
}

function baseClock(name: ClockName, host: HostTime, table: LeapTable | undefined): [number, number, () => bigint] {
  switch (name) {
    case 'utc':
      return [ClockType.UTC, Smear.UNSPECIFIED, () => host.realtime()];
    case 'tai':
      return [ClockType.TAI, Smear.UNSPECIFIED, taiSource(host, table)];
    case 'monotonic':
      return [ClockType.MONOTONIC, Smear.UNSPECIFIED, () => host.boottime()];
    case 'utc-smeared': {
      if (table === undefined) throw new Error('the utc-smeared clock needs the leap-second table to know where to smear');
      const tai = taiSource(host, table);
      return [ClockType.UTC_SMEARED, Smear.NOON_LINEAR, () => smearedUtcFromTai(table, tai())];
    }
  }
}
