/**
 * The leap-second table: when TAI − UTC changed, from the IERS list tzdata ships as
 * /usr/share/zoneinfo/leap-seconds.list. The device needs it twice: to serve TAI on a host
 * whose kernel was never told its TAI offset (CLOCK_TAI then equals CLOCK_REALTIME), and to
 * smear leap seconds for a VIRTIO_RTC_CLOCK_UTC_SMEARED clock, which must know where they are.
 */
import { readFileSync } from 'node:fs';

export const LEAP_SECONDS_LIST = '/usr/share/zoneinfo/leap-seconds.list';

/** Seconds from the NTP epoch (1900) to the Unix epoch (1970). */
const NTP_TO_UNIX = 2_208_988_800n;

export interface LeapEntry {
  /** Unix time (UTC seconds) from which `offset` holds. */
  readonly utc: bigint;
  /** TAI − UTC in seconds. */
  readonly offset: number;
}

export interface LeapTable {
  /** Ascending by `utc`. */
  readonly entries: readonly LeapEntry[];
  /** Unix time after which the list no longer says whether a leap second was announced. */
  readonly expires: bigint;
}

/** Parses the IERS format: "NTPSECONDS OFFSET # date" lines and "#@ NTPSECONDS" for the expiry. */
export function parseLeapSeconds(text: string, source = LEAP_SECONDS_LIST): LeapTable {
  const entries: LeapEntry[] = [];
  let expires: bigint | undefined;
  for (const line of text.split('\n')) {
    const exp = /^#@\s+(\d+)/.exec(line);
    if (exp) expires = BigInt(exp[1]) - NTP_TO_UNIX;
    const m = /^(\d+)\s+(\d+)/.exec(line);
    if (m) entries.push({ utc: BigInt(m[1]) - NTP_TO_UNIX, offset: Number(m[2]) });
  }
  if (entries.length === 0 || expires === undefined) throw new Error(`${source} has no leap-second entries or no expiry line`);
  entries.sort((a, b) => (a.utc < b.utc ? -1 : a.utc > b.utc ? 1 : 0));
  return { entries, expires };
}

export function readLeapSeconds(path = LEAP_SECONDS_LIST): LeapTable {
  return parseLeapSeconds(readFileSync(path, 'utf8'), path);
}

const NS = 1_000_000_000n;
/** Half a day in nanoseconds: the smear of VIRTIO_RTC_SMEAR_NOON_LINEAR runs from noon to noon. */
const HALF_DAY = 43_200n * NS;

/** TAI − UTC in seconds at Unix time `utcNs` (the last change at or before it). */
export function taiOffsetAt(table: LeapTable, utcNs: bigint): number {
  let offset = table.entries[0].offset;
  for (const e of table.entries) {
    if (e.utc * NS > utcNs) break;
    offset = e.offset;
  }
  return offset;
}

/**
 * UTC with leap seconds smeared noon to noon (VIRTIO_RTC_SMEAR_NOON_LINEAR), from TAI in
 * nanoseconds. Around a leap second at UTC midnight M, the clock runs linearly from UTC noon
 * before M to UTC noon after M over the SI seconds between them (86401 for a positive leap,
 * 86399 for a negative one): the spec's frequency change of 1/86400, without the step of
 * 1/86400 s a rounded rate would leave at the far noon. Elsewhere it is UTC.
 */
export function smearedUtcFromTai(table: LeapTable, taiNs: bigint): bigint {
  const { entries } = table;
  for (let i = 1; i < entries.length; i++) {
    const midnight = entries[i].utc * NS;
    const start = midnight - HALF_DAY + BigInt(entries[i - 1].offset) * NS;
    const end = midnight + HALF_DAY + BigInt(entries[i].offset) * NS;
    if (taiNs >= start && taiNs < end) return midnight - HALF_DAY + ((taiNs - start) * 2n * HALF_DAY) / (end - start);
  }
  // Outside every smear window, UTC is TAI minus the offset that held at that TAI instant.
  let offset = entries[0].offset;
  for (const e of entries) {
    if ((e.utc + BigInt(e.offset)) * NS > taiNs) break;
    offset = e.offset;
  }
  return taiNs - BigInt(offset) * NS;
}
