import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputDevice } from '../../../src/devices/input/device.ts';
import { InputDriver } from '../../../src/devices/input/driver.ts';
import { listenInputControl, runInputCommand } from '../../../src/devices/input/control.ts';
import { inputProfile, TABLET_MAX, configAnswer } from '../../../src/devices/input/profile.ts';
import { keyCode, strokes } from '../../../src/devices/input/keys.ts';
import {
  Abs, BUS_VIRTUAL, ConfigSelect, EvType, INPUT_CONFIG, type InputEvent, KEY_SHIFT, Led, Rel, SYN_REPORT, decodeEvent, encodeEvent,
} from '../../../src/devices/input/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceStatus } from '../../../src/virtio/constants.ts';
import { DescriptorChain } from '../../../src/virtio/queue.ts';
import { ScriptQueue, context } from '../virtio/framework-fixture.ts';

/** Events from a driver's stream, and a promise for when `n` have come. */
function collect(events: Readable): { got: InputEvent[]; until(n: number): Promise<void> } {
  const got: InputEvent[] = [];
  let waiter: { n: number; resolve(): void } | undefined;
  events.on('data', (e: InputEvent) => {
    got.push(e);
    if (waiter !== undefined && got.length >= waiter.n) waiter.resolve();
  });
  return {
    got,
    until: (n) => (got.length >= n ? Promise.resolve() : new Promise((resolve) => (waiter = { n, resolve }))),
  };
}

const key = (code: number, value: number): InputEvent => ({ type: EvType.KEY, code, value });
const SYN: InputEvent = { type: EvType.SYN, code: SYN_REPORT, value: 0 };

async function open(kind: 'keyboard' | 'mouse' | 'tablet', options: ConstructorParameters<typeof InputDevice>[1] = {}) {
  const device = new InputDevice(inputProfile(kind), options);
  const { transport, host } = createLoopback(device, { memoryBytes: 1 << 20 });
  const driver = await InputDriver.open(transport, { queueSize: 16 });
  return { device, driver, host };
}

test('the driver learns a keyboard through select/subsel: name, ids, key and LED bits, no auto-repeat, no axes', async () => {
  const { driver } = await open('keyboard');
  assert.equal(driver.info.name, 'paravirt virtio keyboard');
  assert.deepEqual(driver.info.ids, { bustype: BUS_VIRTUAL, vendor: 0, product: 1, version: 1 });
  assert.equal(driver.info.events.get(EvType.KEY)?.length, 255);
  assert.ok(driver.info.events.get(EvType.KEY)?.includes(keyCode('a')!));
  assert.deepEqual(driver.info.events.get(EvType.LED), [Led.NUML, Led.CAPSL, Led.SCROLLL]);
  assert.equal(driver.info.events.has(EvType.REP), false, 'no EV_REP: the guest must not repeat keys the host holds');
  assert.equal(driver.info.abs.size, 0);
  await driver.close();
});

test('the driver learns a tablet: absolute X and Y over 0..32767, buttons, wheel', async () => {
  const { driver } = await open('tablet');
  assert.deepEqual(driver.info.events.get(EvType.ABS), [Abs.X, Abs.Y]);
  assert.deepEqual(driver.info.events.get(EvType.REL), [Rel.WHEEL]);
  assert.deepEqual(driver.info.abs.get(Abs.X), { min: 0, max: TABLET_MAX, fuzz: 0, flat: 0, res: 0 });
  assert.deepEqual(driver.info.abs.get(Abs.Y), { min: 0, max: TABLET_MAX, fuzz: 0, flat: 0, res: 0 });
  await driver.close();
});

test('config questions the device has no answer for read size 0; each write of select or subsel answers afresh', () => {
  const device = new InputDevice(inputProfile('mouse'));
  const ask = (select: number, subsel: number): number => {
    device.config[0] = select;
    device.configWritten(0, 1);
    device.config[1] = subsel;
    device.configWritten(1, 1);
    return INPUT_CONFIG.get(device.config, 'size');
  };
  assert.equal(ask(ConfigSelect.UNSET, 0), 0);
  assert.equal(ask(0x7f, 3), 0, 'an undefined select');
  assert.equal(ask(ConfigSelect.ABS_INFO, Abs.X), 0, 'a mouse has no absolute axes');
  assert.equal(ask(ConfigSelect.EV_BITS, EvType.ABS), 0);
  assert.equal(ask(ConfigSelect.ID_NAME, 1), 0, 'names live at subsel 0 only');
  assert.equal(ask(ConfigSelect.EV_BITS, EvType.REL), 2, 'REL_X, REL_Y and REL_WHEEL fit in two bytes');
  const u = INPUT_CONFIG.get(device.config, 'u');
  assert.deepEqual([...u.subarray(0, 3)], [0b11, 0b1, 0], 'the rest of u is zero');
  assert.equal(ask(ConfigSelect.ID_NAME, 0), 'paravirt virtio mouse'.length);
  assert.equal(configAnswer(inputProfile('mouse'), ConfigSelect.ID_SERIAL, 0).length, 0, 'no serial by default');
  assert.throws(() => new InputDevice(inputProfile('keyboard', 'x'.repeat(129))), /longer than 128 bytes/);
});

test('keys typed from the host arrive in order, each press and release closed by SYN_REPORT', async () => {
  const { device, driver } = await open('keyboard');
  const events = collect(driver.events);
  assert.equal(runInputCommand(device, 'type Hi\\n'), 'ok');
  const H = keyCode('h')!;
  const I = keyCode('i')!;
  const ENTER = keyCode('enter')!;
  const expected = [
    key(KEY_SHIFT, 1), SYN, key(H, 1), SYN, key(H, 0), SYN, key(KEY_SHIFT, 0), SYN,
    key(I, 1), SYN, key(I, 0), SYN, key(ENTER, 1), SYN, key(ENTER, 0), SYN,
  ];
  await events.until(expected.length);
  assert.deepEqual(events.got, expected);
  assert.equal(device.counters.snapshot().device.eventsSent, expected.length);
  await driver.close();
});

test('more events than the ring has buffers: none lost while the driver keeps posting', async () => {
  const { device, driver } = await open('mouse', { backlog: 1024 });
  const events = collect(driver.events);
  for (let i = 1; i <= 200; i++) assert.equal(device.send([{ type: EvType.REL, code: Rel.X, value: -i }]), true);
  await events.until(400);
  const moves = events.got.filter((e) => e.type === EvType.REL).map((e) => e.value);
  assert.deepEqual(moves, Array.from({ length: 200 }, (_, i) => -(i + 1)), 'negative values and order survive');
  assert.equal(device.counters.snapshot().device.droppedNoBuffer, 0);
  await driver.close();
});

test('a tablet position arrives as ABS_X, ABS_Y, SYN_REPORT', async () => {
  const { device, driver } = await open('tablet');
  const events = collect(driver.events);
  assert.equal(runInputCommand(device, 'abs 100 32767'), 'ok');
  assert.equal(runInputCommand(device, 'button left'), 'ok');
  await events.until(7);
  assert.deepEqual(events.got, [
    { type: EvType.ABS, code: Abs.X, value: 100 }, { type: EvType.ABS, code: Abs.Y, value: 32767 }, SYN,
    key(0x110, 1), SYN, key(0x110, 0), SYN,
  ]);
  await driver.close();
});

test('LED state the driver sends on the status queue reaches the host', async () => {
  const seen: InputEvent[] = [];
  const { device, driver } = await open('keyboard', { onStatus: (e) => seen.push(e) });
  await driver.setLed(Led.CAPSL, true);
  await driver.setLed(Led.NUML, true);
  await driver.setLed(Led.NUML, false);
  assert.deepEqual(seen.map((e) => [e.type, e.code, e.value]), [[EvType.LED, Led.CAPSL, 1], [EvType.LED, Led.NUML, 1], [EvType.LED, Led.NUML, 0]]);
  assert.equal(runInputCommand(device, 'leds'), 'leds numlock=0 capslock=1 scrolllock=0');
  await driver.setLed(9, true);
  assert.equal(device.counters.snapshot().device.badStatusEvents, 1, 'an LED the keyboard does not have is counted, not taken');
  await driver.close();
});

test('a malformed status event (short buffer) is counted and the device keeps running', async () => {
  const { device, driver, host } = await open('keyboard');
  const { dma, memory } = driver.core.transport;
  const addr = dma.alloc(4, 8)!;
  memory.write(addr, encodeEvent({ type: EvType.LED, code: 0, value: 1 }).subarray(0, 4));
  assert.equal(await driver.core.queue(1).submit([{ addr, len: 4 }], []), 0);
  assert.equal(device.counters.snapshot().device.badStatusEvents, 1);
  assert.equal(host.state.status & DeviceStatus.DEVICE_NEEDS_RESET, 0);
  const events = collect(driver.events);
  assert.equal(device.key(30, true), true);
  await events.until(2);
  await driver.close();
});

test('events with no driver, or beyond the backlog while the guest posts no buffers, are dropped whole and counted', () => {
  const device = new InputDevice(inputProfile('keyboard'), { backlog: 5 });
  assert.equal(device.key(30, true), false, 'no driver yet');
  assert.equal(device.counters.snapshot().device.droppedNoDriver, 2);

  const q = new ScriptQueue([]);
  const c = context(q);
  device.activate(c.ctx);
  assert.equal(device.key(30, true), true);
  assert.equal(device.key(30, false), true);
  assert.equal(device.send([{ type: EvType.REL, code: 0, value: 1 }, { type: EvType.REL, code: 1, value: 1 }]), false, 'three events do not fit in the one place left');
  assert.equal(device.waiting, 4, 'the backlog holds whole groups only');
  assert.equal(device.counters.snapshot().device.droppedNoBuffer, 3);

  // The driver posts buffers at last: the backlog goes out in order.
  const bufs = Array.from({ length: 4 }, (_, i) => ({ id: i, bytes: new Uint8Array(8) }));
  q.available.push(...bufs.map((b) => new DescriptorChain(b.id, 1, [], [b.bytes], 0, 8)));
  device.queueNotify(0);
  assert.deepEqual(bufs.map((b) => decodeEvent(b.bytes)), [key(30, 1), SYN, key(30, 0), SYN]);
  assert.deepEqual(q.used, [[0, 8], [1, 8], [2, 8], [3, 8]]);
});

test('an eventq buffer smaller than an event is the driver breaking §5.8.6.1: the queue fails, the process lives', () => {
  const device = new InputDevice(inputProfile('keyboard'));
  const q = new ScriptQueue([new DescriptorChain(0, 1, [], [new Uint8Array(4)], 0, 4)]);
  const c = context(q);
  device.activate(c.ctx);
  device.key(30, true);
  assert.equal(c.failed.length, 1);
  assert.match(c.failed[0].message, /§5\.8\.6\.1/);
  assert.equal(device.key(30, false), true, 'later events go nowhere, without a throw');
});

test('control commands refuse bad input in one sentence', () => {
  const device = new InputDevice(inputProfile('keyboard'));
  assert.match(runInputCommand(device, 'key nosuchkey'), /^error key "nosuchkey" is not one/);
  assert.match(runInputCommand(device, 'key a sideways'), /^error key takes a name/);
  assert.match(runInputCommand(device, 'move 1'), /^error move takes two integers/);
  assert.match(runInputCommand(device, 'move 1 99999999999'), /^error move takes two integers/);
  assert.match(runInputCommand(device, 'type é'), /^error "é" cannot be typed/);
  assert.match(runInputCommand(device, 'fly'), /^error "fly" is not a command/);
  assert.match(runInputCommand(device, 'key a'), /^error dropped/, 'no driver is running');
  assert.deepEqual(strokes('A!'), [{ code: keyCode('a'), shift: true }, { code: keyCode('1'), shift: true }]);
  assert.equal(keyCode('#30'), 30);
  assert.equal(keyCode('KEY_ENTER'), 28);
});

test('the control socket answers one line per command', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'input-control-'));
  const { device, driver } = await open('keyboard');
  const server = await listenInputControl(device, join(dir, 'control.sock'));
  try {
    const events = collect(driver.events);
    const socket = connect(join(dir, 'control.sock'));
    socket.setEncoding('utf8');
    let answers = '';
    socket.on('data', (d: string) => (answers += d));
    socket.write('key a\nleds\nbogus\n');
    while (answers.split('\n').length < 4) await once(socket, 'data');
    assert.deepEqual(answers.split('\n').slice(0, 3), ['ok', 'leds numlock=0 capslock=0 scrolllock=0', 'error "bogus" is not a command (key, type, button, move, wheel, abs, leds).']);
    await events.until(4);
    assert.deepEqual(events.got, [key(30, 1), SYN, key(30, 0), SYN]);
    socket.end();
  } finally {
    await server.close();
    await driver.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
