import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type HostTime, kernelTaiOffset, makeClocks } from '../../../src/devices/rtc/clocks.ts';
import { parseLeapSeconds, readLeapSeconds, smearedUtcFromTai, taiOffsetAt } from '../../../src/devices/rtc/leap-seconds.ts';
import { ClockType, Smear } from '../../../src/devices/rtc/wire.ts';
import { HostClock, readHostClock } from '../../../src/native/clock.ts';

const NS = 1_000_000_000n;
/** The last two lines of the IERS list: 36 s from 1 Jul 2015, 37 s from 1 Jan 2017 (Unix 1483228800). */
const TABLE = parseLeapSeconds('3644697600\t36\t# 1 Jul 2015\n3692217600\t37\t# 1 Jan 2017\n#@\t3991593600\n', 'test');
const LEAP = 1_483_228_800n * NS;

/** Host clocks frozen at `utc`, with the kernel's TAI offset `taiOffset` seconds, boot time `boot`. */
function frozenHost(utc: bigint, taiOffset: bigint, boot = 5n * NS): HostTime & { utc: bigint; boot: bigint } {
  const h = { utc, boot, realtime: () => h.utc, tai: () => h.utc + taiOffset * NS, boottime: () => h.boot };
  return h;
}

test('clock_gettime reads the host clocks in nanoseconds', () => {
  const before = BigInt(Date.now()) * 1_000_000n;
  const utc = readHostClock(HostClock.REALTIME);
  const after = BigInt(Date.now() + 1) * 1_000_000n;
  assert.ok(before <= utc && utc <= after, `${utc} within [${before}, ${after}]`);
  const a = readHostClock(HostClock.BOOTTIME);
  assert.ok(readHostClock(HostClock.BOOTTIME) >= a);
  assert.ok(readHostClock(HostClock.MONOTONIC) <= readHostClock(HostClock.BOOTTIME) + NS, 'boot time counts at least the monotonic time');
});

test('the leap-second table: parsed from the IERS list, offsets by date, and the system list reads', () => {
  assert.deepEqual(TABLE.entries.map((e) => [e.utc, e.offset]), [[1_435_708_800n, 36], [1_483_228_800n, 37]]);
  assert.equal(TABLE.expires, 1_782_604_800n);
  assert.equal(taiOffsetAt(TABLE, LEAP - 1n), 36);
  assert.equal(taiOffsetAt(TABLE, LEAP), 37);
  assert.throws(() => parseLeapSeconds('# nothing\n', 'empty.list'), /empty.list has no leap-second entries/);
  assert.ok(readLeapSeconds().entries.length > 20);
});

test('noon-linear smearing: UTC outside the window, continuous across the leap second, half a second behind at midnight', () => {
  const noonBefore = LEAP - 43_200n * NS;
  const noonAfter = LEAP + 43_200n * NS;
  // TAI at those instants: 36 s ahead before the leap, 37 s after.
  assert.equal(smearedUtcFromTai(TABLE, noonBefore - NS + 36n * NS), noonBefore - NS);
  assert.equal(smearedUtcFromTai(TABLE, noonBefore + 36n * NS), noonBefore);
  assert.equal(smearedUtcFromTai(TABLE, noonAfter + 37n * NS), noonAfter);
  assert.equal(smearedUtcFromTai(TABLE, noonAfter + 38n * NS), noonAfter + NS);
  // The leap second is the 43201st SI second of 86401: the smear has absorbed half of it.
  const atLeap = smearedUtcFromTai(TABLE, LEAP + 36n * NS + NS / 2n);
  assert.equal(atLeap, LEAP);
  // Never a step: consecutive SI seconds across the window move the clock by 86400/86401 s.
  let prev = smearedUtcFromTai(TABLE, noonBefore + 36n * NS - NS);
  for (let t = noonBefore + 36n * NS; t <= noonAfter + 38n * NS; t += 3_600n * NS) {
    const now = smearedUtcFromTai(TABLE, t);
    assert.ok(now > prev);
    prev = now;
  }
});

test('host clocks: UTC from CLOCK_REALTIME, TAI from the kernel or the table, monotonic from CLOCK_BOOTTIME', () => {
  const now = 1_765_000_000n * NS;
  const unsynced = frozenHost(now, 0n);
  assert.equal(kernelTaiOffset(unsynced), 0);
  const [utc, tai, mono, smeared] = makeClocks(['utc', 'tai', 'monotonic', 'utc-smeared'], { host: unsynced, leapSeconds: TABLE });
  assert.deepEqual([utc.type, tai.type, mono.type, smeared.type, smeared.smearing], [ClockType.UTC, ClockType.TAI, ClockType.MONOTONIC, ClockType.UTC_SMEARED, Smear.NOON_LINEAR]);
  assert.equal(utc.read(), now);
  assert.equal(tai.read(), now + 37n * NS, 'a kernel without a TAI offset: the table gives it');
  assert.equal(mono.read(), 5n * NS);
  assert.equal(smeared.read(), now, 'far from a leap second the smeared clock is UTC');
  // A kernel that knows its TAI offset is believed.
  const [kernelTai] = makeClocks(['tai'], { host: frozenHost(now, 37n) });
  assert.equal(kernelTai.read(), now + 37n * NS);
  assert.throws(() => makeClocks(['tai'], { host: unsynced }), /tai and utc-smeared clocks need the TAI offset/);
  assert.throws(() => makeClocks(['utc-smeared'], { host: frozenHost(now, 37n) }), /needs the leap-second table/);
});

test('an offset, rate-skewed clock: ahead by the offset at start, gaining ppm of elapsed time, monotonic stays monotonic', () => {
  const host = frozenHost(1_000n * NS, 37n, 10n * NS);
  const [utc, mono] = makeClocks(['utc', 'monotonic'], { host, offsetNs: 3_600n * NS, ratePpm: 100_000 });
  assert.equal(utc.read(), 4_600n * NS);
  host.utc += 10n * NS;
  host.boot += 10n * NS;
  assert.equal(utc.read(), 4_611n * NS, '10 s of host time are 11 s of a clock 10% fast');
  assert.equal(utc.hostDelay(utc.read(), utc.read() + 11n * NS), 10n * NS, 'an alarm 11 clock seconds ahead is 10 host seconds away');
  assert.equal(utc.hostDelay(5n, 1n), 0n);
  const [slow] = makeClocks(['monotonic'], { host, offsetNs: -3_600n * NS, ratePpm: -999_999 });
  assert.equal(slow.read(), 0n, 'clamped at 0, not negative');
  host.boot += NS;
  assert.ok(mono.read() > 0n);
  assert.throws(() => makeClocks(['utc'], { host, ratePpm: -1_000_000 }), /above -1000000/);
});
