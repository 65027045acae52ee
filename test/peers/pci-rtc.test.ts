/**
 * paravirt's rtc driver against a device nobody here wrote: QEMU's own virtio-rtc-pci, over
 * virtio-pci driven through qtest. QEMU's model serves one clock, UTC from its host clock, with
 * neither alarms nor cross-timestamps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RtcDriver, RtcError } from '../../src/devices/rtc/driver.ts';
import { ClockType, HwCounter, RtcFeature, RtcStatus, Smear } from '../../src/devices/rtc/wire.ts';
import { HostClock, readHostClock } from '../../src/native/clock.ts';
import { hasFeature } from '../../src/virtio/constants.ts';
import { startQtest } from '../lab/qtest.ts';
import { virtioPciTransport } from '../lab/qtest-pci.ts';
import { requireLab } from '../lab/require.ts';

test("paravirt's rtc driver reads UTC from QEMU's virtio-rtc-pci over virtio-pci", async (t) => {
  if (!requireLab(t)) return;
  const m = await startQtest({ devices: ['-device', 'virtio-rtc-pci,addr=04.0'], sharedRam: true }, t);
  const transport = await virtioPciTransport(m, 4);
  const rtc = await RtcDriver.open(transport);
  assert.equal(hasFeature(rtc.core.features, RtcFeature.ALARM), false, 'QEMU offers no alarm');
  assert.deepEqual(rtc.clocks, [{ id: 0, type: ClockType.UTC, smearing: Smear.UNSPECIFIED, alarm: false }]);

  // QEMU reads its host clock (the host's CLOCK_REALTIME): the reading lies between ours.
  const before = readHostClock(HostClock.REALTIME);
  const reading = await rtc.read(0);
  const after = readHostClock(HostClock.REALTIME);
  assert.ok(before <= reading && reading <= after, `QEMU's UTC ${reading} within [${before}, ${after}]`);
  const { offsetNs, uncertaintyNs } = await rtc.offset(0, () => readHostClock(HostClock.REALTIME));
  assert.ok(offsetNs >= -uncertaintyNs && offsetNs <= uncertaintyNs, `offset ${offsetNs} ns within ±${uncertaintyNs} ns`);
  t.diagnostic(`QEMU ${m.qemu.version}: UTC − host midpoint ${offsetNs} ns ± ${uncertaintyNs} ns`);

  await assert.rejects(rtc.read(1), (e: RtcError) => e.status === RtcStatus.ENODEV, 'one clock only');
  assert.equal(await rtc.crossTimestampSupported(0, HwCounter.X86_TSC), false);
  await rtc.close();
});
