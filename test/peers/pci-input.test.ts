/**
 * paravirt's input driver against QEMU's own virtio-input devices (virtio-keyboard-pci,
 * virtio-tablet-pci) over virtio-pci through qtest; the events are injected with QMP
 * input-send-event, so they come from QEMU's input layer as a user's keyboard would.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { InputDriver } from '../../src/devices/input/driver.ts';
import { keyCode } from '../../src/devices/input/keys.ts';
import { Abs, Btn, EvType, type InputEvent, Led, SYN_REPORT } from '../../src/devices/input/wire.ts';
import { QmpClient } from '../lab/qmp.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { startQtest } from '../lab/qtest.ts';
import { virtioPciTransport } from '../lab/qtest-pci.ts';
import { requireLab } from '../lab/require.ts';

const SYN: InputEvent = { type: EvType.SYN, code: SYN_REPORT, value: 0 };

/** QEMU with `device` at slot 4 and a QMP socket; the driver opened on it (the test closes it before QEMU goes). */
async function openOn(t: TestContext, device: string): Promise<{ driver: InputDriver; qmp: QmpClient; qemuVersion: string }> {
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'pci-input-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const qmpPath = join(dir, 'qmp.sock');
  const m = await startQtest({ devices: ['-device', `${device},disable-legacy=on,addr=04.0`, '-qmp', `unix:${qemu.toQemuPath(qmpPath)},server=on,wait=off`], sharedRam: true }, t);
  const socket = connect(qmpPath);
  t.after(() => socket.destroy());
  const qmp = new QmpClient(socket);
  await qmp.negotiate();
  const driver = await InputDriver.open(await virtioPciTransport(m, 4));
  return { driver, qmp, qemuVersion: m.qemu.version };
}

/** The next `n` events of the driver's stream. */
async function take(events: Readable, n: number): Promise<InputEvent[]> {
  const got: InputEvent[] = [];
  for await (const e of events.iterator({ destroyOnReturn: false })) {
    got.push(e as InputEvent);
    if (got.length === n) break;
  }
  return got;
}

test("paravirt's input driver reads QEMU's virtio-keyboard-pci: its config, keys injected by QMP in order, LEDs set", async (t) => {
  if (!requireLab(t)) return;
  const { driver, qmp, qemuVersion } = await openOn(t, 'virtio-keyboard-pci');
  assert.equal(driver.info.name, 'QEMU Virtio Keyboard');
  const keys = driver.info.events.get(EvType.KEY) ?? [];
  for (const name of ['a', 'z', 'enter', 'leftshift']) assert.ok(keys.includes(keyCode(name)!), `KEY_${name.toUpperCase()} is declared`);
  assert.deepEqual(driver.info.events.get(EvType.LED), [Led.NUML, Led.CAPSL, Led.SCROLLL]);

  const key = (qcode: string, down: boolean) => ({ type: 'key', data: { down, key: { type: 'qcode', data: qcode } } });
  await qmp.execute('input-send-event', { events: [key('h', true)] });
  await qmp.execute('input-send-event', { events: [key('h', false)] });
  await qmp.execute('input-send-event', { events: [key('i', true)] });
  await qmp.execute('input-send-event', { events: [key('i', false)] });
  const h = keyCode('h')!;
  const i = keyCode('i')!;
  assert.deepEqual(await take(driver.events, 8), [
    { type: EvType.KEY, code: h, value: 1 }, SYN, { type: EvType.KEY, code: h, value: 0 }, SYN,
    { type: EvType.KEY, code: i, value: 1 }, SYN, { type: EvType.KEY, code: i, value: 0 }, SYN,
  ]);
  // §5.8.6.2: QEMU takes the LED event off the status queue and returns the buffer.
  await driver.setLed(Led.CAPSL, true);
  await driver.setLed(Led.CAPSL, false);
  assert.equal(driver.dropped, 0);
  await driver.close();
  t.diagnostic(`QEMU ${qemuVersion}; ${keys.length} key codes declared`);
});

test("paravirt's input driver reads QEMU's virtio-tablet-pci: absolute axes and a click injected by QMP", async (t) => {
  if (!requireLab(t)) return;
  const { driver, qmp } = await openOn(t, 'virtio-tablet-pci');
  assert.equal(driver.info.name, 'QEMU Virtio Tablet');
  assert.deepEqual(driver.info.events.get(EvType.ABS), [Abs.X, Abs.Y]);
  const x = driver.info.abs.get(Abs.X);
  assert.ok(x !== undefined && x.min === 0 && x.max > 0, `ABS_X has a range: ${JSON.stringify(x)}`);
  assert.ok(driver.info.events.get(EvType.KEY)?.includes(Btn.LEFT));

  await qmp.execute('input-send-event', {
    events: [{ type: 'abs', data: { axis: 'x', value: 1000 } }, { type: 'abs', data: { axis: 'y', value: 2000 } }],
  });
  await qmp.execute('input-send-event', { events: [{ type: 'btn', data: { down: true, button: 'left' } }] });
  await qmp.execute('input-send-event', { events: [{ type: 'btn', data: { down: false, button: 'left' } }] });
  const got = await take(driver.events, 7);
  // QEMU scales 0..0x7fff onto the axis range it declared.
  const scale = (v: number, info = x): number => info.min + Math.floor((v * (info.max - info.min)) / 0x7fff);
  assert.deepEqual(got, [
    { type: EvType.ABS, code: Abs.X, value: scale(1000) }, { type: EvType.ABS, code: Abs.Y, value: scale(2000, driver.info.abs.get(Abs.Y)) }, SYN,
    { type: EvType.KEY, code: Btn.LEFT, value: 1 }, SYN, { type: EvType.KEY, code: Btn.LEFT, value: 0 }, SYN,
  ]);
  await driver.close();
});
