import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { RtcClock } from '../../../src/devices/rtc/clocks.ts';
import { RtcDevice } from '../../../src/devices/rtc/device.ts';
import { RtcDriver, RtcError } from '../../../src/devices/rtc/driver.ts';
import {
  ClockType, HEAD_SIZE, HwCounter, MsgType, RtcFeature, RtcStatus, Smear, U64_MAX, decodeResponse, encodeRequest,
} from '../../../src/devices/rtc/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceId, DeviceStatus } from '../../../src/virtio/constants.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { FRAMEWORK_FEATURES, featureMask } from '../../../src/virtio/features.ts';

/** A clock the test moves by hand; hostDelay 0 makes an alarm look at it every millisecond. */
function manualClock(type: number, start: bigint, smearing: number = Smear.UNSPECIFIED): RtcClock & { now: bigint } {
  const clock = { name: `manual ${type}`, type, smearing, now: start, read: () => clock.now, hostDelay: () => 0n };
  return clock;
}

async function open(options: { alarm?: boolean; driverAlarm?: boolean } = {}) {
  const clocks = [manualClock(ClockType.UTC, 1_000n), manualClock(ClockType.TAI, 38_000n), manualClock(ClockType.UTC_SMEARED, 2_000n, Smear.NOON_LINEAR)];
  const device = new RtcDevice({ clocks, alarm: options.alarm ?? true });
  const { transport } = createLoopback(device, { memoryBytes: 1 << 20 });
  const driver = await RtcDriver.open(transport, { alarm: options.driverAlarm });
  return { device, clocks, driver };
}

/** A request of any bytes with `writable` bytes for the answer: the used length and the answer. */
async function raw(driver: RtcDriver, request: Uint8Array, writable: number): Promise<{ len: number; answer: Uint8Array }> {
  const { dma, memory } = driver.core.transport;
  const addr = dma.alloc(request.length + writable + 1, 8)!;
  try {
    memory.write(addr, request);
    memory.write(addr + request.length, new Uint8Array(writable).fill(0xee));
    const out = request.length > 0 ? [{ addr, len: request.length }] : [];
    const inSegs = writable > 0 ? [{ addr: addr + request.length, len: writable }] : [];
    const len = await driver.core.queue(0).submit(out, inSegs);
    return { len, answer: memory.slice(addr + request.length, writable) };
  } finally {
    dma.free(addr);
  }
}

function counter(device: RtcDevice, name: string): number {
  return device.counters.snapshot().device[name] ?? 0;
}

test('rtc: the driver enumerates clocks and capabilities and reads each clock', async () => {
  const { driver, clocks } = await open();
  assert.deepEqual(driver.clocks, [
    { id: 0, type: ClockType.UTC, smearing: Smear.UNSPECIFIED, alarm: true },
    { id: 1, type: ClockType.TAI, smearing: Smear.UNSPECIFIED, alarm: true },
    { id: 2, type: ClockType.UTC_SMEARED, smearing: Smear.NOON_LINEAR, alarm: true },
  ]);
  assert.equal(await driver.read(0), 1_000n);
  assert.equal(await driver.read(1), 38_000n);
  clocks[0].now = 1n << 62n;
  assert.equal(await driver.read(0), 1n << 62n, 'an le64 reading past 2^53 is exact');
  const offset = await driver.offset(1, () => 37_000n);
  assert.deepEqual(offset, { offsetNs: 1_000n, uncertaintyNs: 0n });
  // "no cross-timestamping this device can guarantee": both counters the spec names say no.
  assert.equal(await driver.crossTimestampSupported(0, HwCounter.X86_TSC), false);
  assert.equal(await driver.crossTimestampSupported(0, HwCounter.ARM_VCT), false);
  await driver.close();
});

test('rtc: every answer has its exact size; short requests and short buffers are EINVAL, a missing status is not written', async () => {
  const { driver } = await open();
  const read0 = encodeRequest({ msgType: MsgType.READ, clockId: 0 });
  // A larger buffer than the response: the extra space is ignored.
  const big = await raw(driver, read0, 64);
  assert.equal(big.len, 16);
  assert.equal(decodeResponse(MsgType.READ, big.answer).reading, 1_000n);
  // A READ without its clock_id.
  const short = await raw(driver, read0.subarray(0, 8), 16);
  assert.deepEqual([short.len, short.answer[0]], [HEAD_SIZE, RtcStatus.EINVAL]);
  // Only a response head's worth of room for READ's 16 bytes.
  const tight = await raw(driver, read0, 8);
  assert.deepEqual([tight.len, tight.answer[0]], [HEAD_SIZE, RtcStatus.EINVAL]);
  // Not even a head: the status goes in, what does not fit does not.
  const tiny = await raw(driver, read0, 3);
  assert.deepEqual([tiny.len, tiny.answer[0]], [3, RtcStatus.EINVAL]);
  // No request at all.
  const none = await raw(driver, new Uint8Array(0), 16);
  assert.deepEqual([none.len, none.answer[0]], [HEAD_SIZE, RtcStatus.EINVAL]);
  // Half a head.
  const half = await raw(driver, read0.subarray(0, 5), 16);
  assert.deepEqual([half.len, half.answer[0]], [HEAD_SIZE, RtcStatus.EINVAL]);
  // SET_ALARM is 24 bytes; 16 leave out clock_id and flags.
  const setShort = await raw(driver, encodeRequest({ msgType: MsgType.SET_ALARM, clockId: 0, alarmTime: 5n }).subarray(0, 16), 8);
  assert.deepEqual([setShort.len, setShort.answer[0]], [HEAD_SIZE, RtcStatus.EINVAL]);
  // Reserved bytes of every answer are zero.
  const cfg = await raw(driver, encodeRequest({ msgType: MsgType.CFG }), 16);
  assert.deepEqual([...cfg.answer], [0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
  // No writable part: nothing to answer into, and the device stays healthy.
  assert.equal((await raw(driver, read0, 0)).len, 0);
  assert.equal(await driver.read(0), 1_000n);
  await driver.close();
});

test('rtc: unknown message types, clock ids, hardware counters and flag bits', async () => {
  const { driver, device } = await open();
  const unknown = await raw(driver, encodeRequest({ msgType: 0x0bad }), 16);
  assert.deepEqual([unknown.len, unknown.answer[0]], [HEAD_SIZE, RtcStatus.EOPNOTSUPP]);
  const notif = await raw(driver, encodeRequest({ msgType: MsgType.NOTIF_ALARM }), 16);
  assert.equal(notif.answer[0], RtcStatus.EOPNOTSUPP, 'a notification type is no request');
  for (const msgType of [MsgType.READ, MsgType.CLOCK_CAP, MsgType.CROSS_CAP, MsgType.READ_ALARM, MsgType.SET_ALARM_ENABLED]) {
    await assert.rejects(driver.request({ msgType, clockId: 3 }), (e: RtcError) => e.status === RtcStatus.ENODEV);
    await assert.rejects(driver.request({ msgType, clockId: 0xffff }), (e: RtcError) => e.status === RtcStatus.ENODEV);
  }
  await assert.rejects(driver.setAlarm(7, 0n), /SET_ALARM of clock 7 with ENODEV/);
  // Cross-timestamps: none, for a counter the spec names or one it does not.
  await assert.rejects(driver.request({ msgType: MsgType.READ_CROSS, clockId: 0, hwCounter: HwCounter.X86_TSC }), (e: RtcError) => e.status === RtcStatus.EOPNOTSUPP);
  await assert.rejects(driver.request({ msgType: MsgType.CROSS_CAP, clockId: 0, hwCounter: 0x42 }), (e: RtcError) => e.status === RtcStatus.EOPNOTSUPP);
  await assert.rejects(driver.request({ msgType: MsgType.CROSS_CAP, clockId: 0, hwCounter: 0xf5 }), (e: RtcError) => e.status === RtcStatus.EOPNOTSUPP);
  // Alarm flags other than ALARM_ENABLED.
  await assert.rejects(driver.request({ msgType: MsgType.SET_ALARM, clockId: 0, alarmTime: 5n, flags: 0x82 }), (e: RtcError) => e.status === RtcStatus.EINVAL);
  await assert.rejects(driver.request({ msgType: MsgType.SET_ALARM_ENABLED, clockId: 0, flags: 2 }), (e: RtcError) => e.status === RtcStatus.EINVAL);
  assert.ok(counter(device, 'status_enodev') >= 11);
  const { queues, device: counts } = device.counters.snapshot();
  assert.equal(queues[0].errors, counts.status_enodev + counts.status_eopnotsupp + counts.status_einval, 'every error status is a requestq error');
  assert.equal(await driver.read(1), 38_000n, 'the device still answers');
  await driver.close();
});

test('rtc: without VIRTIO_RTC_F_ALARM there is no alarmq, no alarm capability, and alarm requests are ENODEV', async () => {
  for (const [alarm, driverAlarm] of [[false, true], [true, false]] as const) {
    const { driver } = await open({ alarm, driverAlarm });
    assert.ok(driver.clocks.every((c) => !c.alarm), 'no clock claims an alarm');
    await assert.rejects(driver.readAlarm(0), (e: RtcError) => e.status === RtcStatus.ENODEV);
    await assert.rejects(driver.setAlarm(0, 5n), (e: RtcError) => e.status === RtcStatus.ENODEV);
    await assert.rejects(driver.setAlarmEnabled(0, true), (e: RtcError) => e.status === RtcStatus.ENODEV);
    assert.equal(await driver.read(0), 1_000n);
    await driver.close();
  }
});

test('rtc alarms: an alarm in the past fires at once; a disabled one does not until enabled', async () => {
  const { driver, device } = await open();
  const fired = driver.nextAlarm(0);
  await driver.setAlarm(0, 500n);
  await fired;
  assert.equal(counter(device, 'alarms_expired'), 1);
  assert.deepEqual(await driver.readAlarm(0), { time: 500n, enabled: true });

  // Disabled and in the past: nothing, and the alarm reads back disabled with its time.
  await driver.setAlarm(1, 10n, false);
  assert.deepEqual(await driver.readAlarm(1), { time: 10n, enabled: false });
  assert.equal(counter(device, 'alarms_expired'), 1, 'a disabled alarm does not expire');
  // Enabling an alarm whose time has passed is an expiration event.
  const enabled = driver.nextAlarm(1);
  await driver.setAlarmEnabled(1, true);
  await enabled;
  assert.deepEqual(await driver.readAlarm(1), { time: 10n, enabled: true });
  assert.equal(counter(device, 'alarms_expired'), 2);
  await driver.close();
});

test('rtc alarms: a far-future alarm is kept and does not fire; the clock reaching it fires it once; cancelling keeps the time', async () => {
  const { driver, device, clocks } = await open();
  await driver.setAlarm(2, U64_MAX);
  assert.deepEqual(await driver.readAlarm(2), { time: U64_MAX, enabled: true });
  await driver.setAlarm(2, 2_500n);
  assert.equal(counter(device, 'alarms_expired'), 0, 'neither alarm time has been reached');
  const fired = driver.nextAlarm(2);
  clocks[2].now = 2_500n;
  await fired;
  assert.equal(counter(device, 'alarms_expired'), 1);
  // Cancel: disabled, time kept.
  await driver.setAlarmEnabled(2, false);
  assert.deepEqual(await driver.readAlarm(2), { time: 2_500n, enabled: false });
  await driver.close();
});

test('rtc alarms: the host sets an alarm the driver hears of and reads back; alarms wait on the timer given, not on the clock of the event loop', async () => {
  const waits: { ms: number; look: () => void; cancelled: boolean }[] = [];
  const alarmTimer = {
    after(ms: number, look: () => void) {
      const wait = { ms, look, cancelled: false };
      waits.push(wait);
      return () => void (wait.cancelled = true);
    },
  };
  const clock = manualClock(ClockType.UTC_SMEARED, 1_000n, Smear.NOON_LINEAR);
  const device = new RtcDevice({ clocks: [clock], alarm: true, alarmTimer });
  assert.equal(device.setAlarm(0, 5n, true), false, 'no driver has negotiated alarms yet');
  const { transport } = createLoopback(device, { memoryBytes: 1 << 20 });
  const driver = await RtcDriver.open(transport);

  assert.equal(device.setAlarm(0, 5_000n, true), true);
  assert.deepEqual(await driver.readAlarm(0), { time: 5_000n, enabled: true }, 'the driver reads the host\'s alarm back');
  assert.equal(counter(device, 'alarms_expired'), 0);
  const pending = waits.filter((w) => !w.cancelled);
  assert.equal(pending.length, 1, 'one wait for the clock to reach the alarm');
  const fired = driver.nextAlarm(0);
  clock.now = 5_000n;
  pending[0].look();
  await fired;
  assert.equal(counter(device, 'alarms_expired'), 1);

  // A time already reached expires at once; one past the le64 range is refused.
  const again = driver.nextAlarm(0);
  assert.equal(device.setAlarm(0, 1n, true), true);
  await again;
  assert.equal(counter(device, 'alarms_expired'), 2);
  assert.equal(device.setAlarm(1, 1n, true), false, 'there is no clock 1');
  assert.throws(() => device.setAlarm(0, U64_MAX + 1n, true), /outside the le64 range/);
  await driver.close();
  assert.ok(waits.every((w) => w.cancelled), 'a reset leaves no wait behind');
});

test('rtc alarms: an alarmq buffer smaller than a notification breaks the driver rule and fails that queue alone', async () => {
  const device = new RtcDevice({ clocks: [manualClock(ClockType.UTC, 1_000n)], alarm: true });
  const { transport } = createLoopback(device, { memoryBytes: 1 << 20 });
  const core = await VirtioDriver.start(transport, { name: 'rtc', deviceId: DeviceId.RTC, features: FRAMEWORK_FEATURES | featureMask([RtcFeature.ALARM]), queues: 2 });
  const small = transport.dma.alloc(8, 8)!;
  const posted = core.queue(1).submit([], [{ addr: small, len: 8 }]);
  posted.catch(() => {});
  const req = transport.dma.alloc(24 + 8, 8)!;
  transport.memory.write(req, encodeRequest({ msgType: MsgType.SET_ALARM, clockId: 0, alarmTime: 1n, flags: 1 }));
  // The alarm is in the past: its notification needs a buffer, and the one posted is too small.
  assert.equal(await core.queue(0).submit([{ addr: req, len: 24 }], [{ addr: req + 24, len: 8 }]), HEAD_SIZE);
  assert.equal(transport.memory.slice(req + 24, 1)[0], RtcStatus.OK);
  assert.equal((await transport.getStatus()) & DeviceStatus.DEVICE_NEEDS_RESET, DeviceStatus.DEVICE_NEEDS_RESET);
  await core.close();
});
