/**
 * paravirt's vsock driver with SEQPACKET connections (§5.10.6.6) against the device in-process
 * over the mmio loopback: message boundaries and SEQ_EOR both ways up to the 128 KiB limit,
 * connections either side opens, and a hostile device's packets (oversize messages, empty
 * parts, a type that is not the connection's).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { VsockDevice, type VsockHost } from '../../../src/devices/vsock/device.ts';
import { VsockDriver } from '../../../src/devices/vsock/driver.ts';
import { SeqpacketStream } from '../../../src/devices/vsock/seqpacket-stream.ts';
import {
  HEADER_BYTES, HOST_CID, MAX_MESSAGE, Op, OversizeMessage, Seq, type SeqpacketMessage, SocketType, encodeHeader,
} from '../../../src/devices/vsock/wire.ts';
import { type SeqpacketSocket, seqpacketPair } from '../../../src/native/unix-socket.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { nextMessage, readMessages, sendMessage } from '../../lab/seqpacket.ts';

const CID = 42;
/** Sizes around rx buffer (4 KiB), tx packet (64 KiB) and message (128 KiB) boundaries. */
const SIZES = [1, 4095, 4096, 4097, 65536, 65537, 100_000, MAX_MESSAGE];

/** A device whose SEQPACKET host ends are one end of a socket pair each; the host program holds the other. */
async function setup(withSeqpacket = true) {
  const programs: SeqpacketSocket[] = [];
  const host: VsockHost = {
    connect: () => Promise.reject(new Error('no stream listeners here')),
    ...(withSeqpacket && {
      connectSeqpacket: async () => {
        const [ours, theirs] = seqpacketPair();
        programs.push(theirs);
        return new SeqpacketStream(ours, MAX_MESSAGE);
      },
    }),
  };
  const device = new VsockDevice({ guestCid: CID, host });
  const loop = createLoopback(device, { memoryBytes: 8 << 20 });
  const driver = await VsockDriver.open(loop.transport, { queueSize: 64 });
  return { device, driver, programs };
}

test('SEQPACKET is negotiated when the device offers it, and refused clearly when it does not', async () => {
  const { driver } = await setup();
  assert.equal(driver.seqpacket, true);
  await driver.close();
  const plain = await setup(false);
  assert.equal(plain.driver.seqpacket, false);
  await assert.rejects(plain.driver.connectSeqpacket(5), /does not offer SEQPACKET/);
  await plain.driver.close();
});

test('guest to host and back: messages up to 128 KiB arrive whole and in order, EOR passed on', async () => {
  const { device, driver, programs } = await setup();
  const guest = await driver.connectSeqpacket(6000);
  const [program] = programs;
  const up = SIZES.map((n) => randomBytes(n));
  // The writes go out back to back: later messages need credit the earlier ones freed.
  const sent = up.map((bytes, i) => new Promise<void>((resolve, reject) => guest.write({ bytes, eor: i % 2 === 0 } satisfies SeqpacketMessage, (err) => (err ? reject(err) : resolve()))));
  for (const bytes of up) assert.deepEqual(await nextMessage(program), new Uint8Array(bytes));
  await Promise.all(sent);

  const down = SIZES.map((n) => randomBytes(n));
  const [got] = await Promise.all([readMessages(guest, down.length), (async () => { for (const m of down) await sendMessage(program, m); })()]);
  assert.deepEqual(got.map((m) => m.bytes.length), SIZES);
  got.forEach((m, i) => assert.deepEqual(m.bytes, new Uint8Array(down[i])));
  const counts = device.counters.snapshot().device;
  assert.equal(counts.oversizeMessages, 0);
  assert.equal(counts.creditViolations, 0);
  assert.equal(counts.resets, 0);
  assert.deepEqual(driver.counts, { badPackets: 0, oversizeMessages: 0, emptyMessages: 0, droppedReplies: 0 });
  await driver.close();
});

test('host to guest: a SEQPACKET CONNECT reaches listenSeqpacket; many messages each way keep their boundaries', async () => {
  const { driver, device } = await setup();
  const accepted = new Promise<Duplex>((resolve) => driver.listenSeqpacket(77, resolve));
  const [ours, program] = seqpacketPair();
  const settled = new Promise<number | Error>((resolve) => device.connectToGuest(77, new SeqpacketStream(ours, MAX_MESSAGE), resolve, SocketType.SEQPACKET));
  const guest = await accepted;
  assert.equal(typeof (await settled), 'number');
  // 64 messages of 3000 bytes: 192 000 bytes, more than the 128 KiB of credit either way.
  const down = Array.from({ length: 64 }, () => randomBytes(3000));
  const [got] = await Promise.all([readMessages(guest, down.length), (async () => { for (const m of down) await sendMessage(program, m); })()]);
  got.forEach((m, i) => assert.deepEqual(m.bytes, new Uint8Array(down[i])));
  // Bare bytes are a message without a record mark; the guest's echo arrives message by message.
  for (const m of got) guest.write(m.bytes);
  for (const m of down) assert.deepEqual(await nextMessage(program), new Uint8Array(m));
  await driver.close();
  program.close();
});

test('a message larger than the host can take fails its write with OversizeMessage', async () => {
  const { driver } = await setup();
  const guest = await driver.connectSeqpacket(6001);
  guest.on('error', () => {});
  const failed = new Promise<Error | null | undefined>((resolve) => guest.write({ bytes: new Uint8Array(MAX_MESSAGE + 1), eor: false }, resolve));
  assert.ok((await failed) instanceof OversizeMessage);
  await driver.close();
});

/**
 * A hostile device: packets put straight into the driver's receive path, as if the device had
 * written them into an rx buffer, from host port `hostPort` to guest port `guestPort`.
 */
function inject(driver: VsockDriver, guestPort: number, hostPort: number, h: { op?: number; type?: number; flags?: number }, payload = new Uint8Array(0)): void {
  const header = encodeHeader({
    srcCid: HOST_CID, dstCid: CID, srcPort: hostPort, dstPort: guestPort, len: payload.length,
    type: h.type ?? SocketType.SEQPACKET, op: h.op ?? Op.RW, flags: h.flags ?? 0, bufAlloc: MAX_MESSAGE, fwdCnt: 0,
  });
  const packet = new Uint8Array(HEADER_BYTES + payload.length);
  packet.set(header);
  packet.set(payload, HEADER_BYTES);
  (driver as unknown as { received(bytes: Uint8Array): void }).received(packet);
}

async function hostileConnection() {
  const s = await setup();
  const accepted = new Promise<Duplex>((resolve) => s.driver.listenSeqpacket(80, resolve));
  const [ours, program] = seqpacketPair();
  const port = await new Promise<number | Error>((resolve) => s.device.connectToGuest(80, new SeqpacketStream(ours, MAX_MESSAGE), resolve, SocketType.SEQPACKET));
  assert.equal(typeof port, 'number');
  const guest = await accepted;
  return { ...s, guest, program, hostPort: port as number };
}

test('a hostile device: a message growing past 128 KiB resets the connection, counted; the device hears RST', async () => {
  const { driver, device, guest, program, hostPort } = await hostileConnection();
  // The reset destroys the connection with an error, which once() would reject on.
  const closed = new Promise((resolve) => guest.on('close', resolve));
  guest.on('error', () => {});
  for (let sent = 0; sent <= MAX_MESSAGE; sent += 4096) inject(driver, 80, hostPort, {}, new Uint8Array(4096));
  await closed;
  assert.equal(driver.counts.oversizeMessages, 1);
  // The device dropped its end on our RST: the host program reads end of file.
  assert.equal(await nextMessage(program), null);
  assert.equal(device.connections, 0);
  await driver.close();
});

test('a hostile device: empty parts and empty messages are not kept; a stream packet on a SEQPACKET connection is answered with RST', async () => {
  const { driver, device, guest, program, hostPort } = await hostileConnection();
  for (let i = 0; i < 1000; i++) inject(driver, 80, hostPort, {});
  inject(driver, 80, hostPort, { flags: Seq.EOM });
  inject(driver, 80, hostPort, { flags: Seq.EOM | Seq.EOR }, new Uint8Array([1, 2, 3]));
  assert.equal(driver.counts.emptyMessages, 1);
  const [only] = await readMessages(guest, 1);
  assert.deepEqual(only, { bytes: new Uint8Array([1, 2, 3]), eor: true });
  assert.equal(guest.readableLength, 0, 'nothing else was delivered');

  // The reset destroys the connection with an error, which once() would reject on.
  const closed = new Promise((resolve) => guest.on('close', resolve));
  guest.on('error', () => {});
  inject(driver, 80, hostPort, { type: SocketType.STREAM }, new Uint8Array(10));
  await closed;
  assert.equal(driver.counts.badPackets, 1);
  assert.equal(await nextMessage(program), null);
  assert.equal(device.connections, 0);
  await driver.close();
});

test('a hostile device flooding packets for no connection: RST answers on the tx queue are bounded, the rest dropped and counted', async () => {
  const { driver, programs } = await setup();
  for (let i = 0; i < 1000; i++) inject(driver, 9999, 8888, { op: Op.CREDIT_UPDATE });
  assert.equal(driver.counts.badPackets, 0);
  assert.equal(driver.counts.droppedReplies, 1000 - 64, '64 answers in flight at most');
  // The driver works on: a connection carries a message.
  const guest = await driver.connectSeqpacket(6002);
  guest.write(new Uint8Array([7]));
  assert.deepEqual(await nextMessage(programs[0]), new Uint8Array([7]));
  await driver.close();
});
