/**
 * A stock Linux guest's virtio_rtc driver (built by lab:setup from Debian's linux-source, unchanged)
 * uses paravirt's RTC device through QEMU's vhost-user-rtc-pci, with the back-ends run as a user
 * runs them: `paravirt serve rtc`. One back-end serves the host's clocks with alarms; a second
 * serves UTC an hour ahead and 20% fast, which the guest must see.
 *
 * Tolerances are causal, never timed: a clock the guest reads must lie between the host clock
 * read before the agent was asked and the one read after it answered. Under TCG that window is
 * the agent's round trip (200-550 ms measured, most of it testptp starting under TCG); the
 * diagnostic prints it and where inside it the guest's reading fell.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HostClock, readHostClock } from '../../src/native/clock.ts';
import { kernelTaiOffset, HOST_TIME } from '../../src/devices/rtc/clocks.ts';
import { readLeapSeconds, taiOffsetAt } from '../../src/devices/rtc/leap-seconds.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { startGuest, type Guest } from '../lab/guest.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const NS = 1_000_000_000n;

/** Every PTP clock in the guest: its /dev node, clock_name and the virtio device it belongs to. */
async function ptpClocks(guest: Guest): Promise<{ dev: string; name: string; virtio: string }[]> {
  const out = await guest.check('for p in /sys/class/ptp/ptp*; do echo "$(basename $p)|$(cat $p/clock_name)|$(basename $(readlink -f $p/device))"; done');
  return out.trim().split('\n').filter(Boolean).map((l) => {
    const [dev, name, virtio] = l.split('|');
    return { dev: `/dev/${dev}`, name, virtio };
  });
}

/** testptp -g for each device, in one guest command: nanoseconds, in order. */
async function readPtp(guest: Guest, devs: readonly string[]): Promise<bigint[]> {
  const out = await guest.check(devs.map((d) => `testptp -d ${d} -g`).join('; '));
  return [...out.matchAll(/clock time: (\d+)\.(\d+)/g)].map((m) => BigInt(m[1]) * NS + BigInt(m[2]));
}

/** Host CLOCK_REALTIME around a guest command: the guest's work happened between the two. */
async function bracketed<T>(run: () => Promise<T>): Promise<{ before: bigint; after: bigint; value: T }> {
  const before = readHostClock(HostClock.REALTIME);
  const value = await run();
  const after = readHostClock(HostClock.REALTIME);
  return { before, after, value };
}

const ms = (ns: bigint): string => `${(Number(ns) / 1e6).toFixed(1)} ms`;

async function serve(t: test.TestContext, dir: string, name: string, args: string[]): Promise<string> {
  const socketPath = join(dir, `${name}.sock`);
  const backend = new PeerProcess(`paravirt serve rtc (${name})`, [process.execPath, PARAVIRT, 'serve', 'rtc', '--socket-path', socketPath, ...args], { textStdout: true });
  t.after(async () => {
    const exit = await backend.stop();
    assert.equal(exit.code, 0, `the ${name} back-end exits cleanly on SIGTERM`);
  });
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  return socketPath;
}

test("vhost-user-rtc: Linux's virtio_rtc reads paravirt's UTC, TAI, monotonic and smeared clocks, sets an RTC alarm that fires, and sees a skewed clock skewed", async (t) => {
  if (!requireLab(t)) return;
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vu-rtc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const host = await serve(t, dir, 'host', ['--alarm']);
  const started = await bracketed(() => serve(t, dir, 'skewed', ['--clocks', 'utc', '--offset', '3600', '--rate-ppm', '200000']));
  const skewed = started.value;

  const guest = await startGuest(t, {
    name: 'vu-rtc',
    devices: [
      '-chardev', `socket,id=rtc0,path=${qemu.toQemuPath(host)}`, '-device', 'vhost-user-rtc-pci,chardev=rtc0,addr=05.0',
      '-chardev', `socket,id=rtc1,path=${qemu.toQemuPath(skewed)}`, '-device', 'vhost-user-rtc-pci,chardev=rtc1,addr=06.0',
    ],
  });

  // The driver binds both devices; each clock becomes a PTP clock named after its type and variant.
  const bound = (await guest.check('ls /sys/bus/virtio/drivers/virtio_rtc/')).split(/\s+/).filter((n) => n.startsWith('virtio'));
  assert.equal(bound.length, 2, 'virtio_rtc drives both devices');
  const clocks = await ptpClocks(guest);
  const devices = [...new Set(clocks.map((c) => c.virtio))].map((v) => clocks.filter((c) => c.virtio === v));
  const [hostClocks, skewedClocks] = devices.sort((a, b) => b.length - a.length);
  assert.deepEqual(hostClocks.map((c) => c.name), [
    'Virtio PTP type 0/variant 0', 'Virtio PTP type 1/variant 0', 'Virtio PTP type 2/variant 0', 'Virtio PTP type 3/variant 1',
  ], 'UTC, TAI, monotonic, smeared UTC (noon-linear), in clock-id order');
  assert.deepEqual(skewedClocks.map((c) => c.name), ['Virtio PTP type 0/variant 0']);
  const [utc, tai, mono] = hostClocks.map((c) => c.dev);

  // UTC agrees with the host's CLOCK_REALTIME: the reading lies inside the agent's round trip.
  const u = await bracketed(() => readPtp(guest, [utc]));
  const reading = u.value[0];
  assert.ok(u.before <= reading && reading <= u.after, `guest UTC ${reading} within host [${u.before}, ${u.after}]`);
  t.diagnostic(`UTC: guest reading − host midpoint ${ms(reading - (u.before + u.after) / 2n)}, round trip ${ms(u.after - u.before)}`);

  // TAI is ahead of UTC by the TAI offset the device uses: the kernel's, else the leap-second table's.
  const kernel = kernelTaiOffset(HOST_TIME);
  const offset = BigInt(kernel !== 0 ? kernel : taiOffsetAt(readLeapSeconds(), readHostClock(HostClock.REALTIME))) * NS;
  const [utc1, taiNow, utc2] = await readPtp(guest, [utc, tai, utc]);
  assert.ok(utc1 + offset <= taiNow && taiNow <= utc2 + offset, `TAI ${taiNow} − ${offset / NS} s within UTC [${utc1}, ${utc2}]`);
  t.diagnostic(`TAI − UTC = ${offset / NS} s (${kernel !== 0 ? 'host kernel' : 'leap-second table; the host kernel has no TAI offset'})`);

  // The monotonic clock is the host's CLOCK_BOOTTIME, and does not go back.
  const m = await bracketed(() => readPtp(guest, [mono, mono]));
  const bootBefore = readHostClock(HostClock.BOOTTIME);
  assert.ok(m.value[0] <= m.value[1], 'monotonic readings do not decrease');
  assert.ok(m.value[1] <= bootBefore, 'monotonic is not ahead of the host boot time');

  // The smeared UTC clock is the RTC class device; it reads the host's time in whole seconds.
  const rtc = (await guest.check('for r in /sys/class/rtc/rtc*; do readlink -f $r/device | grep -q virtio && basename $r; done')).trim().split('\n');
  assert.equal(rtc.length, 1, 'one RTC class device, for the smeared UTC clock');
  const rtcDev = rtc[0];
  const s = await bracketed(() => guest.check(`cat /sys/class/rtc/${rtcDev}/since_epoch`));
  const seconds = BigInt(s.value.trim());
  assert.ok(s.before / NS <= seconds && seconds <= s.after / NS, `RTC ${seconds} s within host [${s.before / NS}, ${s.after / NS}]`);

  // An alarm two seconds ahead fires: a read of /dev/rtcN blocks until the alarm interrupt and
  // returns its count and flags (RTC_IRQF | RTC_AF); the RTC core then disarms wakealarm.
  const irq = await guest.check([
    `echo +2 > /sys/class/rtc/${rtcDev}/wakealarm`,
    `test -n "$(cat /sys/class/rtc/${rtcDev}/wakealarm)"`,
    `dd if=/dev/${rtcDev} bs=8 count=1 2>/dev/null | od -An -tx1`,
    `cat /sys/class/rtc/${rtcDev}/wakealarm`,
  ].join(' && '));
  const bytes = irq.trim().split(/\s+/).map((h) => parseInt(h, 16));
  assert.equal(bytes[0], 0xa0, 'the interrupt data says RTC_IRQF | RTC_AF');
  assert.equal(bytes[1], 1, 'one alarm interrupt counted');
  assert.equal(irq.trim().split('\n').length, 1, 'wakealarm is empty once the alarm fired');

  // The skewed device: an hour ahead and 20% fast since it started, which was between t0 and
  // t1. A reading at host time h is h + 3600 s + (h − start) / 5: bracketing h by the agent's
  // round trip and the start by t0..t1 bounds it exactly. Twenty seconds of boot put it
  // seconds ahead of anything a clock running at the host's rate could read.
  const s1 = await bracketed(() => readPtp(guest, [skewedClocks[0].dev]));
  const got = s1.value[0];
  const lo = s1.before + 3_600n * NS + (s1.before - started.after) / 5n;
  const hi = s1.after + 3_600n * NS + (s1.after - started.before) / 5n;
  assert.ok(lo <= got && got <= hi, `skewed reading ${got} within [${lo}, ${hi}]`);
  assert.ok(got > s1.after + 3_600n * NS, 'the skewed clock gained on the host since it started');
  t.diagnostic(`skewed device: ${ms(got - (s1.before + s1.after) / 2n - 3_600n * NS)} gained over 3600 s in ${ms((s1.before + s1.after) / 2n - (started.before + started.after) / 2n)} of host time`);
});
