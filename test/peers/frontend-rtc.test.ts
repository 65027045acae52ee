/**
 * paravirt's rtc driver over the vhost-user front-end against `paravirt serve rtc` in its own
 * process: the TAI and monotonic clocks and the alarms, which QEMU's virtio-rtc-pci lacks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { HOST_TIME, kernelTaiOffset } from '../../src/devices/rtc/clocks.ts';
import { RtcDriver } from '../../src/devices/rtc/driver.ts';
import { readLeapSeconds, taiOffsetAt } from '../../src/devices/rtc/leap-seconds.ts';
import { ClockType, RtcFeature } from '../../src/devices/rtc/wire.ts';
import { HostClock, readHostClock } from '../../src/native/clock.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId, hasFeature } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const log = pino({ level: 'warn' });
const NS = 1_000_000_000n;

test('rtc driver over the front-end against `paravirt serve rtc --alarm`: TAI, monotonic and alarms', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fe-rtc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'rtc.sock');
  const backend = new PeerProcess('paravirt serve rtc', [process.execPath, PARAVIRT, 'serve', 'rtc', '--alarm', '--clocks', 'tai,monotonic,utc', '--socket-path', socketPath], { textStdout: true });
  t.after(() => backend.stop());
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');

  const rtc = await RtcDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.RTC, log, queueSize: 64 }), { log });
  t.after(() => rtc.close());
  assert.equal(hasFeature(rtc.core.features, RtcFeature.ALARM), true);
  assert.deepEqual(rtc.clocks.map((c) => [c.type, c.alarm]), [[ClockType.TAI, true], [ClockType.MONOTONIC, true], [ClockType.UTC, true]]);

  // TAI is UTC plus the offset the host kernel or the leap-second table gives.
  const kernel = kernelTaiOffset(HOST_TIME);
  const offset = BigInt(kernel !== 0 ? kernel : taiOffsetAt(readLeapSeconds(), readHostClock(HostClock.REALTIME))) * NS;
  const before = readHostClock(HostClock.REALTIME);
  const tai = await rtc.read(0);
  const after = readHostClock(HostClock.REALTIME);
  assert.ok(before + offset <= tai && tai <= after + offset, `TAI ${tai} is UTC + ${offset / NS} s`);

  // Monotonic is the host's boot time, and never goes back.
  const boot0 = readHostClock(HostClock.BOOTTIME);
  const readings: bigint[] = [];
  for (let i = 0; i < 20; i++) readings.push(await rtc.read(1));
  const boot1 = readHostClock(HostClock.BOOTTIME);
  assert.ok(readings.every((r, i) => i === 0 || r >= readings[i - 1]), 'monotonic readings do not decrease');
  assert.ok(boot0 <= readings[0] && readings[19] <= boot1);

  // An alarm on the monotonic clock 50 ms ahead fires; its notification comes after the time.
  const target = (await rtc.read(1)) + 50_000_000n;
  const fired = rtc.nextAlarm(1);
  await rtc.setAlarm(1, target);
  assert.deepEqual(await rtc.readAlarm(1), { time: target, enabled: true });
  await fired;
  assert.ok((await rtc.read(1)) >= target, 'the clock has reached the alarm time when the notification arrives');

  // A TAI alarm in the past fires at once; a cancelled far one keeps its time, disabled.
  const past = rtc.nextAlarm(0);
  await rtc.setAlarm(0, tai - NS);
  await past;
  await rtc.setAlarm(2, after + 3_600n * NS);
  await rtc.setAlarmEnabled(2, false);
  assert.deepEqual(await rtc.readAlarm(2), { time: after + 3_600n * NS, enabled: false });
});
