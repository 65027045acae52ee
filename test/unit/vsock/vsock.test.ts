import { after, test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { type Duplex, duplexPair } from 'node:stream';
import { VsockDevice, type VsockHost } from '../../../src/devices/vsock/device.ts';
import { VsockDriver } from '../../../src/devices/vsock/driver.ts';
import { unixSocketHost } from '../../../src/devices/vsock/hybrid.ts';
import { Credit } from '../../../src/devices/vsock/credit.ts';
import { HOST_CID, Op, SocketType, VsockFeature } from '../../../src/devices/vsock/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { featureBit, hasFeature } from '../../../src/virtio/constants.ts';
import { FRAMEWORK_FEATURES } from '../../../src/virtio/features.ts';
import { readAll, writeAll } from '../../lab/streams.ts';
import { rawGuest } from './raw-guest.ts';

const CID = 42;

/**
 * Host programs listening on Unix sockets `${dir}/vsock_${port}`, as hybrid vsock has them, and
 * the streams they accepted, in order.
 */
function memoryHost(ports: number[]): { host: VsockHost; accepted: Duplex[]; next(): Promise<Duplex> } {
  const dir = mkdtempSync(join(tmpdir(), 'vsock-'));
  const accepted: Duplex[] = [];
  const waiters: ((d: Duplex) => void)[] = [];
  const servers = ports.map((port) =>
    createServer({ allowHalfOpen: true }, (s) => {
      const w = waiters.shift();
      if (w !== undefined) w(s);
      else accepted.push(s);
    }).listen(join(dir, `vsock_${port}`)),
  );
  after(() => {
    for (const s of servers) s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    accepted,
    host: unixSocketHost(join(dir, 'vsock')),
    next: () => (accepted.length > 0 ? Promise.resolve(accepted.shift()!) : new Promise((resolve) => waiters.push(resolve))),
  };
}

function sha(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function setup(ports: number[], bufAlloc = 64 * 1024) {
  const mem = memoryHost(ports);
  const device = new VsockDevice({ guestCid: CID, host: mem.host, bufAlloc });
  const loop = createLoopback(device, { memoryBytes: 8 << 20 });
  const driver = await VsockDriver.open(loop.transport, { queueSize: 64, bufAlloc });
  return { device, driver, mem, loop };
}

test('the driver reads the guest CID; a device refuses a reserved CID', async () => {
  const { driver } = await setup([]);
  assert.equal(driver.guestCid, CID);
  await driver.close();
  assert.throws(() => new VsockDevice({ guestCid: 2, host: memoryHost([]).host }), /guest CID 2 must be/);
});

test('guest to host: 1 MiB each way through one connection, the host reading slowly, nothing lost or reordered', async () => {
  const { device, driver, mem } = await setup([5000]);
  const [guest, host] = await Promise.all([driver.connect(5000), mem.next()]);
  const up = randomBytes(1 << 20);
  const down = randomBytes(1 << 20);
  const [gotUp, gotDown] = await Promise.all([readAll(host, { slowChunk: 1024 }), readAll(guest), writeAll(guest, up), writeAll(host, down)]);
  assert.equal(sha(gotUp), sha(up));
  assert.equal(sha(gotDown), sha(down));
  const counts = device.counters.snapshot().device;
  assert.equal(counts.creditViolations, 0);
  // The slow host reader held the guest back through credit, not through the back-end's memory.
  assert.ok(counts.creditExhausted > 0, 'the guest ran out of credit while the host read slowly');
  assert.ok(counts.bufferedToHostPeak <= 64 * 1024, `at most one receive buffer held for the host, saw ${counts.bufferedToHostPeak}`);
  assert.ok(counts.bufferedToGuestPeak <= 256 * 1024, `host bytes held for the guest stay near its credit, saw ${counts.bufferedToGuestPeak}`);
  assert.deepEqual([counts.bufferedToHost, counts.bufferedToGuest], [0, 0]);
  await driver.close();
});

test('host to guest (connectToGuest, as `CONNECT P`): the guest accepts on a listening port; a closed port is refused', async () => {
  const { device, driver } = await setup([]);
  const accepted = new Promise<Duplex>((resolve) => driver.listen(1234, resolve));
  const [ours, program] = duplexPair();
  const local = await new Promise<number | Error>((resolve) => device.connectToGuest(1234, ours, resolve));
  assert.equal(typeof local, 'number');
  const guest = await accepted;
  const data = randomBytes(300_000);
  const [got] = await Promise.all([readAll(guest, { slowChunk: 1024 }), writeAll(program, data)]);
  assert.equal(sha(got), sha(data));

  const [ours2] = duplexPair();
  const refused = await new Promise<number | Error>((resolve) => device.connectToGuest(999, ours2, resolve));
  assert.ok(refused instanceof Error, 'nothing listens on guest port 999');
  await driver.close();
});

test('32 concurrent connections each carry their own bytes', async () => {
  const { driver, mem } = await setup([7000]);
  const guests = await Promise.all(Array.from({ length: 32 }, () => driver.connect(7000)));
  const hosts = await Promise.all(guests.map(() => mem.next()));
  const payloads = guests.map(() => randomBytes(40_000));
  const [received] = await Promise.all([Promise.all(hosts.map((h) => readAll(h))), ...guests.map((g, i) => writeAll(g, payloads[i]))]);
  // Which host stream belongs to which guest socket is the accept order; the contents must match one to one.
  assert.deepEqual(received.map(sha).sort(), payloads.map(sha).sort());
  await driver.close();
});

test('a connection to a host port nobody listens on is refused with RST', async () => {
  const { device, driver } = await setup([]);
  await assert.rejects(driver.connect(6000), /refused/);
  assert.equal(device.counters.snapshot().device.refusedConnections, 1);
  await driver.close();
});

test('malformed packets, unknown ops and packets for no connection: counted or answered with RST, the device runs on', async () => {
  const mem = memoryHost([200]);
  const device = new VsockDevice({ guestCid: CID, host: mem.host });
  const g = await rawGuest(device, CID);
  await g.send({}, undefined, new Uint8Array(10));
  assert.equal(device.counters.snapshot().device.badPackets, 1, 'a tx buffer shorter than a header');
  await g.send({ srcCid: 77 });
  assert.equal(device.counters.snapshot().device.badPackets, 2, 'a packet from another CID is not answered');
  await g.send({ op: 99 });
  await g.until(1);
  assert.deepEqual([g.rx[0].op, g.rx[0].dstPort, g.rx[0].srcPort], [Op.RST, 100, 200], 'an unknown op is reset');
  await g.send({ op: Op.RW, len: 10 }, new Uint8Array(4));
  await g.until(2);
  assert.equal(g.rx[1].op, Op.RST, 'a len that is not the payload');
  await g.send({ op: Op.RW, srcPort: 101 }, new Uint8Array(8));
  await g.until(3);
  assert.deepEqual([g.rx[2].op, g.rx[2].dstPort], [Op.RST, 101], 'data for no connection');
  await g.send({ op: Op.REQUEST, type: 7 });
  await g.until(4);
  assert.equal(g.rx[3].op, Op.RST, 'an unknown socket type');
  assert.equal(g.rx.every((h) => h.srcCid === HOST_CID && h.dstCid === CID), true);
  await g.core.close();
});

test('a device whose host cannot make message-keeping ends does not offer SEQPACKET; a SEQPACKET connect is then refused with RST in its own type', async () => {
  const mem = memoryHost([200]);
  const device = new VsockDevice({ guestCid: CID, host: { connect: (port) => mem.host.connect(port) } });
  const wanted = FRAMEWORK_FEATURES | featureBit(VsockFeature.STREAM) | featureBit(VsockFeature.SEQPACKET);
  const g = await rawGuest(device, CID, true, wanted);
  assert.equal(hasFeature(g.core.features, VsockFeature.SEQPACKET), false, 'VIRTIO_VSOCK_F_SEQPACKET is not negotiated');
  await g.send({ op: Op.REQUEST, type: SocketType.SEQPACKET });
  await g.until(1);
  assert.deepEqual([g.rx[0].op, g.rx[0].type, g.rx[0].dstPort, g.rx[0].srcPort], [Op.RST, SocketType.SEQPACKET, 100, 200]);
  assert.equal(device.connections, 0);
  assert.equal(mem.accepted.length, 0, 'no host program was connected');
  await g.send({ op: Op.REQUEST });
  await g.until(2);
  assert.equal(g.rx[1].op, Op.RESPONSE, 'a stream connection to the same port is accepted');
  await g.core.close();
});

test('a guest sending more than the credit it was given is reset', async () => {
  const mem = memoryHost([200]);
  const device = new VsockDevice({ guestCid: CID, host: mem.host, bufAlloc: 8192 });
  const g = await rawGuest(device, CID);
  await g.send({ op: Op.REQUEST });
  await g.until(1);
  assert.equal(g.rx[0].op, Op.RESPONSE);
  assert.equal(g.rx[0].bufAlloc, 8192);
  await mem.next();
  await g.send({}, new Uint8Array(8193));
  await g.until(2);
  assert.equal(g.rx.at(-1)!.op, Op.RST);
  assert.equal(device.counters.snapshot().device.creditViolations, 1);
  assert.equal(device.connections, 0);
  await g.core.close();
});

test('rx buffers never posted: packets wait, nothing is lost, and they arrive in order once buffers come', async () => {
  const device = new VsockDevice({ guestCid: CID, host: memoryHost([]).host });
  const g = await rawGuest(device, CID, false);
  const results: (number | Error)[] = [];
  for (let i = 0; i < 3; i++) device.connectToGuest(10 + i, duplexPair()[0], (r) => results.push(r));
  assert.equal(results.length, 0);
  g.post();
  await g.until(3);
  assert.deepEqual(g.rx.map((h) => [h.op, h.dstPort]), [[Op.REQUEST, 10], [Op.REQUEST, 11], [Op.REQUEST, 12]]);
  await g.core.close();
});

test('a driver that comes back after a reset hears TRANSPORT_RESET and connects anew', async () => {
  const mem = memoryHost([5000]);
  const device = new VsockDevice({ guestCid: CID, host: mem.host });
  const loop = createLoopback(device, { memoryBytes: 8 << 20 });
  const first = await VsockDriver.open(loop.transport, { queueSize: 16 });
  await first.connect(5000);
  assert.equal(device.connections, 1);
  await first.close();
  assert.equal(device.connections, 0, 'a device reset drops every connection');
  const second = await VsockDriver.open(loop.transport, { queueSize: 16 });
  while (second.transportResets === 0) await new Promise((r) => setImmediate(r));
  const again = await second.connect(5000);
  again.end();
  await second.close();
});

test('credit arithmetic wraps at 2^32', () => {
  const c = new Credit(1000);
  c.peerUpdate(100, 0xffff_fff0);
  c.sent(0xffff_fff0);
  assert.equal(c.peerFree, 100);
  c.sent(0x20);
  assert.equal(c.peerFree, 68);
  assert.equal(c.received(1000), true);
  assert.equal(c.received(1), false);
  c.forwarded(500);
  assert.equal(c.received(500), true);
});

test('a host program that sends and closes: the guest reads every byte, then the end of the stream', async () => {
  const { driver, mem } = await setup([5000]);
  const [guest, host] = await Promise.all([driver.connect(5000), mem.next()]);
  const data = randomBytes(300_000);
  host.end(data, () => host.destroy());
  assert.equal(sha(await readAll(guest, { slowChunk: 4096 })), sha(data), 'nothing sent before the close is lost');
  await driver.close();
});

test('a guest that shuts down sending, then closes: the device lets go of its host socket though the host program keeps its end open', { timeout: 30_000 }, async () => {
  const mem = memoryHost([5000]);
  const hostEnds: Duplex[] = [];
  const host: VsockHost = { connect: async (port) => hostEnds[hostEnds.push(await mem.host.connect(port)) - 1] };
  const device = new VsockDevice({ guestCid: CID, host });
  const driver = await VsockDriver.open(createLoopback(device, { memoryBytes: 8 << 20 }).transport, { queueSize: 64 });
  const [guest, program] = await Promise.all([driver.connect(5000), mem.next()]);
  const data = randomBytes(10_000);
  // SHUTDOWN(SEND) once the bytes are out, as a Linux guest's shutdown(SHUT_WR); the program reads to the end.
  const [got] = await Promise.all([readAll(program), writeAll(guest, data)]);
  assert.equal(sha(got), sha(data));
  const released = new Promise((resolve) => hostEnds[0].once('close', resolve));
  guest.destroy(); // then close(): SHUTDOWN(SEND | RCV)
  await released;
  assert.equal(device.connections, 0);
  program.destroy();
  await driver.close();
});

test('a host program that breaks off mid-stream: the guest connection is reset, not left waiting for credit', async () => {
  const { device, driver, mem } = await setup([5000]);
  const [guest, host] = await Promise.all([driver.connect(5000), mem.next()]);
  const hostRead = new Promise<void>((resolve) => {
    let got = 0;
    host.on('data', (c: Buffer) => {
      got += c.length;
      if (got >= 100_000) {
        host.destroy();
        resolve();
      }
    });
  });
  const [, written] = await Promise.allSettled([hostRead, writeAll(guest, randomBytes(4 << 20))]);
  assert.equal(written.status, 'rejected', 'the guest writer hears of the reset');
  assert.match(String((written as PromiseRejectedResult).reason), /reset/);
  while (device.connections > 0) await new Promise((r) => setImmediate(r));
  assert.ok(device.counters.snapshot().device.resets >= 1);
  await driver.close();
});

test('answers to a guest that posts no rx buffers are bounded: past the backlog they are dropped and counted', async () => {
  const device = new VsockDevice({ guestCid: CID, host: memoryHost([]).host });
  const g = await rawGuest(device, CID, false);
  for (let i = 0; i < 300; i++) await g.send({ op: Op.RW, srcPort: 1000 + i }, new Uint8Array(1));
  const counts = device.counters.snapshot().device;
  assert.equal(counts.droppedReplies, 300 - 256, 'the rx backlog holds 256 answers, the rest are dropped');
  g.post();
  await g.until(256);
  assert.equal(g.rx.every((h) => h.op === Op.RST), true);
  await g.core.close();
});
