import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { ReadStream } from 'node:tty';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { pino } from 'pino';
import { consoleType } from '../../../src/devices/console/descriptor.ts';
import { openEndpoint, parseEndpoint, parseNamedEndpoint } from '../../../src/devices/console/endpoints.ts';
import { ConsoleDevice } from '../../../src/devices/console/device.ts';
import { ConsoleDriver, type DriverPort } from '../../../src/devices/console/driver.ts';
import type { ConsolePort } from '../../../src/devices/console/port.ts';
import {
  CONSOLE_CONFIG,
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  ConsoleFeature,
  ControlEvent,
  decodeControl,
  encodeControl,
  portReceiveQueue,
} from '../../../src/devices/console/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceId, featureBit } from '../../../src/virtio/constants.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { EventReceiver } from '../../../src/virtio/event-receiver.ts';
import { FRAMEWORK_FEATURES } from '../../../src/virtio/features.ts';
import { allQueues } from '../virtio/all-queues.ts';

/** A host end whose output collects what the guest wrote; `slow` completes each write a turn later. */
function hostEnd(options: { slow?: boolean; highWaterMark?: number } = {}): { input: PassThrough; output: Writable; received: Buffer[]; bytes(): Buffer } {
  const received: Buffer[] = [];
  const output = new Writable({
    highWaterMark: options.highWaterMark ?? 16 * 1024,
    write(chunk: Buffer, _enc, callback) {
      received.push(chunk);
      if (options.slow === true) setImmediate(callback);
      else callback();
    },
  });
  return { input: new PassThrough(), output, received, bytes: () => Buffer.concat(received) };
}

async function read(port: DriverPort, n: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  while (got < n) {
    const chunk = port.read() as Buffer | null;
    if (chunk === null) {
      await once(port, 'readable');
      continue;
    }
    parts.push(chunk);
    got += chunk.length;
  }
  return Buffer.concat(parts);
}

async function until(port: ConsolePort, event: string, done: () => boolean): Promise<void> {
  while (!done()) await once(port, event);
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`console over mmio (${ring} ring): the driver learns ports, names and the console; bytes cross both ways`, async () => {
    const device = new ConsoleDevice([{ id: 0, console: true }, { id: 1, name: 'org.paravirt.a' }, { id: 2, name: 'org.paravirt.b' }], { maxPorts: 4, size: { cols: 80, rows: 25 } });
    const host = hostEnd();
    device.port(1)!.attach(host);
    const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
    const driver = await ConsoleDriver.open(transport, { packed });
    assert.equal(driver.maxPorts, 4);
    const a = await driver.port('org.paravirt.a');
    const b = await driver.port('org.paravirt.b');
    const con = await driver.consolePort();
    assert.deepEqual([a.id, b.id, con.id], [1, 2, 0]);
    await a.hostReady();
    assert.equal(b.hostConnected, false, 'port b has no host client');

    await a.open();
    await until(device.port(1)!, 'guest-open', () => device.port(1)!.guestOpen);
    const toHost = randomBytes(100_000);
    await new Promise<void>((resolve, reject) => a.write(toHost, (err) => (err ? reject(err) : resolve())));
    assert.deepEqual(host.bytes(), toHost, 'the host end got exactly what the guest wrote');
    const toGuest = randomBytes(50_000);
    host.input.write(toGuest);
    assert.deepEqual(await read(a, toGuest.length), toGuest, 'the guest got exactly what the host wrote');

    await a.closePort();
    await until(device.port(1)!, 'guest-close', () => !device.port(1)!.guestOpen);
    await driver.close();
  });

  test(`console over mmio (${ring} ring): a slow host reader (back-pressure) loses nothing`, async () => {
    const device = new ConsoleDevice([{ id: 1, name: 'slow' }], { maxPorts: 2 });
    const host = hostEnd({ slow: true, highWaterMark: 4096 });
    device.port(1)!.attach(host);
    const { transport } = createLoopback(device, { memoryBytes: 8 << 20 });
    const driver = await ConsoleDriver.open(transport, { packed, queueSize: 16 });
    const port = await driver.port('slow');
    const data = randomBytes(1 << 20);
    const written = new Promise<void>((resolve, reject) => port.end(data, (err?: Error | null) => (err ? reject(err) : resolve())));
    await written;
    assert.equal(host.bytes().length, data.length);
    assert.equal(createHash('sha256').update(host.bytes()).digest('hex'), createHash('sha256').update(data).digest('hex'));
    assert.equal(device.counters.snapshot().device.discardedBytes, 0);
    await driver.close();
  });

  test(`console over mmio (${ring} ring): host input waits for the guest to open the port, then arrives whole`, async () => {
    const device = new ConsoleDevice([{ id: 1, name: 'in' }], { maxPorts: 2, backlog: 2 });
    const host = hostEnd();
    device.port(1)!.attach(host);
    const { transport } = createLoopback(device, { memoryBytes: 8 << 20 });
    const driver = await ConsoleDriver.open(transport, { packed, queueSize: 8 });
    const port = await driver.port('in');
    const data = randomBytes(300_000);
    host.input.write(data);
    assert.equal(port.readableLength, 0, 'nothing reaches a port the guest has not opened');
    await port.open();
    assert.deepEqual(await read(port, data.length), data);
    await driver.close();
  });
}

test('console: guest bytes written while no host client is connected are discarded and counted', async () => {
  const device = new ConsoleDevice([{ id: 1, name: 'p' }], { maxPorts: 2 });
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const driver = await ConsoleDriver.open(transport);
  const port = await driver.port('p');
  await driver.transmit(port.id, new Uint8Array(1000));
  assert.equal(device.counters.snapshot().device.discardedBytes, 1000);
  const host = hostEnd();
  device.port(1)!.attach(host);
  await port.hostReady();
  await driver.transmit(port.id, Uint8Array.of(1, 2, 3));
  assert.deepEqual([...host.bytes()], [1, 2, 3], 'only bytes written while connected reach the host');
  device.port(1)!.detach();
  while (port.hostConnected) await once(port, 'host');
  await driver.close();
});

test('console: ports added and removed while the driver runs', async () => {
  const device = new ConsoleDevice([{ id: 0, console: true }], { maxPorts: 4 });
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const driver = await ConsoleDriver.open(transport);
  await driver.consolePort();
  device.addPort({ id: 3, name: 'late' });
  const late = await driver.port('late');
  assert.equal(late.id, 3);
  const removed = once(driver, 'remove');
  device.removePort(3);
  assert.equal(((await removed)[0] as DriverPort).id, 3);
  assert.equal(driver.ports.has(3), false);
  device.addPort({ id: 3, name: 'again' });
  const host = hostEnd();
  device.port(3)!.attach(host);
  const again = await driver.port('again');
  await again.hostReady();
  await driver.transmit(3, Uint8Array.of(9));
  assert.deepEqual([...host.bytes()], [9], 'a port added again carries bytes');
  assert.throws(() => device.addPort({ id: 4 }), /port 4 is outside 0 to 3/);
  assert.throws(() => device.addPort({ id: 3 }), /port 3 exists already/);
  await driver.close();
});

test('console: a resize reaches the driver as RESIZE and in the configuration space', async () => {
  const device = new ConsoleDevice([{ id: 0, console: true }], { maxPorts: 2, size: { cols: 80, rows: 24 } });
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const driver = await ConsoleDriver.open(transport);
  const first = (await once(driver, 'resize'))[0] as { cols: number; rows: number };
  assert.deepEqual([first.cols, first.rows], [80, 24]);
  const next = once(driver, 'resize');
  device.resize(132, 43);
  const second = (await next)[0] as { cols: number; rows: number };
  assert.deepEqual([second.cols, second.rows], [132, 43]);
  const config = CONSOLE_CONFIG.decode(await driver.core.readConfig(0, CONSOLE_CONFIG.size));
  assert.deepEqual([config.cols, config.rows, config.maxNrPorts], [132, 43, 2]);
  await driver.close();
});

/** A raw multiport driver: control queues by hand, no port queues posted unless asked. */
async function rawDriver(device: ConsoleDevice, postControl = true) {
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const features = FRAMEWORK_FEATURES | featureBit(ConsoleFeature.MULTIPORT) | featureBit(ConsoleFeature.EMERG_WRITE);
  const core = await VirtioDriver.start(transport, { name: 'raw', deviceId: DeviceId.CONSOLE, features, queues: allQueues, queueSize: 16 });
  const messages: { id: number; event: number; value: number; payload: string }[] = [];
  const arrived = new PassThrough({ objectMode: true });
  if (postControl) {
    new EventReceiver(core.queue(CONTROL_RX_QUEUE), transport.memory, transport.dma, {
      bufferSize: 512,
      log: core.log,
      onBuffer: (bytes) => {
        const m = decodeControl(bytes)!;
        const msg = { id: m.id, event: m.event, value: m.value, payload: Buffer.from(m.payload).toString() };
        messages.push(msg);
        arrived.write(msg);
      },
    });
  }
  const send = async (bytes: Uint8Array): Promise<void> => {
    const addr = transport.dma.alloc(Math.max(1, bytes.length), 8)!;
    transport.memory.write(addr, bytes);
    await core.queue(CONTROL_TX_QUEUE).submit([{ addr, len: bytes.length }], []);
    transport.dma.free(addr);
  };
  const next = async (): Promise<{ id: number; event: number; value: number; payload: string }> => {
    const m = arrived.read() as { id: number; event: number; value: number; payload: string } | null;
    if (m !== null) return m;
    await once(arrived, 'readable');
    return next();
  };
  return { core, transport, send, next, messages };
}

test('console: malformed and out-of-order control messages are counted and ignored; the device keeps working', async () => {
  const device = new ConsoleDevice([{ id: 1, name: 'n' }], { maxPorts: 2 });
  const { send, next, core } = await rawDriver(device);
  await send(encodeControl(1, ControlEvent.PORT_READY, 1)); // before DEVICE_READY: port 1 was not added yet
  await send(Uint8Array.of(1, 2, 3)); // shorter than the header
  await send(encodeControl(0, 99, 0)); // no such event
  await send(encodeControl(0, ControlEvent.DEVICE_ADD, 0)); // a device's message, from the driver
  await send(encodeControl(0xffff_ffff, ControlEvent.PORT_OPEN, 1)); // port id out of range
  assert.equal(device.counters.snapshot().device.controlErrors, 5);

  await send(encodeControl(0, ControlEvent.DEVICE_READY, 1));
  assert.deepEqual(await next(), { id: 1, event: ControlEvent.DEVICE_ADD, value: 0, payload: '' });
  await send(encodeControl(1, ControlEvent.PORT_OPEN, 1)); // before PORT_READY
  await send(encodeControl(0, ControlEvent.DEVICE_READY, 1)); // twice
  assert.equal(device.counters.snapshot().device.controlErrors, 7);
  assert.equal(device.port(1)!.guestOpen, false);
  await send(encodeControl(1, ControlEvent.PORT_READY, 1));
  assert.deepEqual(await next(), { id: 1, event: ControlEvent.PORT_NAME, value: 1, payload: 'n' });
  await send(encodeControl(1, ControlEvent.PORT_OPEN, 1));
  assert.equal(device.port(1)!.guestOpen, true, 'a well-formed PORT_OPEN after the bad ones is honoured');
  await core.close();
});

test('console: a driver that never posts receive buffers holds host input back without losing it', async () => {
  const device = new ConsoleDevice([{ id: 1, name: 'n' }], { maxPorts: 2, backlog: 2 });
  const host = hostEnd();
  device.port(1)!.attach(host);
  const { send, next, core, transport } = await rawDriver(device);
  await send(encodeControl(0, ControlEvent.DEVICE_READY, 1));
  await next();
  await send(encodeControl(1, ControlEvent.PORT_READY, 1));
  await send(encodeControl(1, ControlEvent.PORT_OPEN, 1));
  const data = randomBytes(1 << 20);
  for (let at = 0; at < data.length; at += 16384) host.input.write(data.subarray(at, at + 16384));
  await new Promise((resolve) => setImmediate(resolve));
  assert.ok(host.input.isPaused(), 'the device stopped reading the host end');
  assert.ok(device.port(1)!.waitingChunks <= 3, 'at most the backlog and one refused chunk wait in the device');

  const got: Buffer[] = [];
  let total = 0;
  const all = new Promise<void>((resolve) => {
    new EventReceiver(core.queue(portReceiveQueue(1)), transport.memory, transport.dma, {
      bufferSize: 4096,
      log: core.log,
      onBuffer: (bytes) => {
        got.push(Buffer.from(bytes));
        total += bytes.length;
        if (total >= data.length) resolve();
      },
    });
  });
  await all;
  assert.deepEqual(Buffer.concat(got), data, 'every byte arrived once buffers were posted');
  await core.close();
});

test('console: a driver that never posts control buffers makes the device drop control messages (counted), not hang', async () => {
  const device = new ConsoleDevice([], { maxPorts: 4 });
  const { send, core } = await rawDriver(device, false);
  await send(encodeControl(0, ControlEvent.DEVICE_READY, 1));
  // Backlog 16 + 4 * 4 = 32 messages; each add and remove is one.
  for (let i = 0; i < 40; i++) {
    device.addPort({ id: 1 });
    device.removePort(1);
  }
  assert.equal(device.counters.snapshot().device.controlDropped, 80 - 32);
  await core.close();
});

test('console: the emergency write register sends one byte to port 0', async () => {
  const device = new ConsoleDevice([{ id: 0, console: true }], { maxPorts: 2 });
  const host = hostEnd();
  device.port(0)!.attach(host);
  const { core } = await rawDriver(device);
  await core.writeConfig(CONSOLE_CONFIG.offset.emergWr, Uint8Array.of(0x41, 0, 0, 0));
  assert.deepEqual([...host.bytes()], [0x41]);
  assert.equal(device.counters.snapshot().device.emergencyBytes, 1);
  await core.close();
});

test('console host ends: a Unix socket takes one client at a time; a file is appended to', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'console-ends-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const log = pino({ level: 'silent' });
  const device = new ConsoleDevice([{ id: 1, name: 'sock' }, { id: 2, name: 'log' }], { maxPorts: 3 });
  const closeSocket = await openEndpoint({ kind: 'unix', path: join(dir, 'p.sock') }, device.port(1)!, log);
  writeFileSync(join(dir, 'log.txt'), 'earlier\n');
  const closeFile = await openEndpoint({ kind: 'file', path: join(dir, 'log.txt') }, device.port(2)!, log);
  assert.equal(device.port(2)!.hostConnected, true, 'a file is always connected');

  const first = connect(join(dir, 'p.sock'));
  await until(device.port(1)!, 'host-change', () => device.port(1)!.hostConnected);
  const second = connect(join(dir, 'p.sock'));
  await once(second, 'close');
  assert.equal(device.port(1)!.hostConnected, true, 'the first client stays');
  first.destroy();
  await until(device.port(1)!, 'host-change', () => !device.port(1)!.hostConnected);

  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const driver = await ConsoleDriver.open(transport);
  await driver.port('log');
  await driver.transmit(2, new TextEncoder().encode('from the guest\n'));
  await closeFile();
  assert.equal(readFileSync(join(dir, 'log.txt'), 'utf8'), 'earlier\nfrom the guest\n');
  await closeSocket();
  assert.throws(() => statSync(join(dir, 'p.sock')), 'closing removes the socket file');
  await assert.rejects(openEndpoint({ kind: 'unix', path: join(dir, 'log.txt') }, device.port(1)!, log), /port sock socket .*log\.txt exists and is not a socket/);
  assert.match(readFileSync(join(dir, 'log.txt'), 'utf8'), /from the guest/, 'another kind of file is never replaced');
  await driver.close();
});

test('console command line: a bad endpoint or port option is one sentence naming it', async () => {
  assert.throws(() => parseNamedEndpoint('noequals'), /--port must be NAME=ENDPOINT/);
  assert.throws(() => parseNamedEndpoint('a=tcp:1'), /--port a must be one of unix:PATH, pty, file:PATH, not "tcp:1"/);
  assert.throws(() => parseEndpoint('--console', 'file:/x', ['unix', 'pty', 'stdio']), /--console must be one of unix:PATH, pty, stdio/);
  const env = { sockets: 1, log: pino({ level: 'silent' }) };
  const named = [parseNamedEndpoint('a=file:/nonexistent/dir/x'), parseNamedEndpoint('b=file:/nonexistent/dir/y')];
  await assert.rejects(consoleType.host.create({ port: named, maxPorts: 2 }, env), /--max-ports 2 leaves no room for 2 named ports/);
  await assert.rejects(consoleType.host.create({ port: [named[0], named[0]] }, env), /--port a is given twice/);
  await assert.rejects(consoleType.host.create({ port: [named[0]] }, env), /port a: cannot open \/nonexistent\/dir\/x for appending \(ENOENT\)/);
});

test('console host ends: a pseudo-terminal carries bytes both ways, raw', async (t) => {
  const device = new ConsoleDevice([{ id: 1, name: 'tty' }], { maxPorts: 2 });
  const lines: string[] = [];
  const closePty = await openEndpoint({ kind: 'pty' }, device.port(1)!, pino({ level: 'info' }, { write: (s: string) => void lines.push(s) }));
  const path = (JSON.parse(lines[0]) as { pty: string }).pty;
  assert.match(path, /^\/dev\/pts\/\d+$/);
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const driver = await ConsoleDriver.open(transport);
  const port = await driver.port('tty');
  await port.open();
  // A terminal program: the terminal side, opened as screen would.
  const terminalFd = openSync(path, 'r+');
  const terminal = new ReadStream(terminalFd);
  t.after(() => terminal.destroy());
  const fromGuest = Buffer.from('guest says\r\n\x03');
  const seen = readFrom(terminal, fromGuest.length);
  await driver.transmit(port.id, fromGuest);
  assert.deepEqual(await seen, fromGuest, 'raw: no translation, no signal characters acted on');
  writeSync(terminalFd, 'typed\n');
  assert.equal((await read(port, 6)).toString(), 'typed\n');
  await driver.close();
  await closePty();
});

async function readFrom(s: ReadStream, n: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  for await (const chunk of s) {
    parts.push(chunk as Buffer);
    got += (chunk as Buffer).length;
    if (got >= n) break;
  }
  return Buffer.concat(parts);
}
