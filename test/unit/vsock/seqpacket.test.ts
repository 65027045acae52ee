/**
 * vsock SEQPACKET connections (§5.10.6.6) against a raw packet driver: message boundaries by
 * VIRTIO_VSOCK_SEQ_EOM both ways, SEQ_EOR passed on, the message limit, type rules, and the
 * Unix SOCK_SEQPACKET host ends (SeqpacketStream, the `PATH.seqpacket` listener).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { duplexPair } from 'node:stream';
import { pino } from 'pino';
import { VsockDevice, type VsockHost } from '../../../src/devices/vsock/device.ts';
import { listenHybrid } from '../../../src/devices/vsock/hybrid.ts';
import { SeqpacketStream } from '../../../src/devices/vsock/seqpacket-stream.ts';
import { MAX_MESSAGE, Op, OversizeMessage, Seq, type SeqpacketMessage, SocketType, VsockFeature } from '../../../src/devices/vsock/wire.ts';
import { type SeqpacketSocket, connectSeqpacket, seqpacketPair } from '../../../src/native/unix-socket.ts';
import { featureBit, hasFeature } from '../../../src/virtio/constants.ts';
import { FRAMEWORK_FEATURES } from '../../../src/virtio/features.ts';
import { rawGuest } from './raw-guest.ts';
import { nextMessage, sendMessage } from '../../lab/seqpacket.ts';

const CID = 42;
const SEQ = SocketType.SEQPACKET;
const WANTED = FRAMEWORK_FEATURES | featureBit(VsockFeature.STREAM) | featureBit(VsockFeature.SEQPACKET);

/** A device whose SEQPACKET host ends are one end of a socket pair each; the program holds the other. */
function pairHost(maxMessage = MAX_MESSAGE): { host: VsockHost; programs: SeqpacketSocket[] } {
  const programs: SeqpacketSocket[] = [];
  return {
    programs,
    host: {
      connect: () => Promise.reject(new Error('no stream listeners here')),
      connectSeqpacket: async () => {
        const [ours, theirs] = seqpacketPair();
        programs.push(theirs);
        return new SeqpacketStream(ours, maxMessage);
      },
    },
  };
}

/** A raw guest with one SEQPACKET connection to host port 200, its buffer `bufAlloc`. */
async function connected(device: VsockDevice, bufAlloc = 1 << 20) {
  const g = await rawGuest(device, CID, true, WANTED);
  assert.equal(hasFeature(g.core.features, VsockFeature.SEQPACKET), true, 'VIRTIO_VSOCK_F_SEQPACKET is negotiated');
  await g.send({ op: Op.REQUEST, type: SEQ, bufAlloc });
  await g.until(1);
  assert.deepEqual([g.rx[0].op, g.rx[0].type], [Op.RESPONSE, SEQ]);
  return g;
}

/** Let the device's and the sockets' callbacks run until `done()` holds. */
async function until(done: () => boolean): Promise<void> {
  while (!done()) await new Promise((r) => setImmediate(r));
}

test('guest to host: parts are held until EOM and reach the host program as one message each; the receive buffer advertised is the message limit', async () => {
  const { host, programs } = pairHost();
  const device = new VsockDevice({ guestCid: CID, host });
  const g = await connected(device);
  assert.equal(g.rx[0].bufAlloc, MAX_MESSAGE, 'a Linux sender refuses a message larger than this itself');
  const program = programs[0];
  await g.send({ type: SEQ }, new Uint8Array(100).fill(1));
  // Empty parts without EOM add nothing to the message.
  for (let i = 0; i < 3; i++) await g.send({ type: SEQ });
  await g.send({ type: SEQ }, new Uint8Array(200).fill(2));
  assert.equal(program.receive(), null, 'nothing reaches the host before EOM');
  assert.equal(device.counters.snapshot().device.bufferedToHost, 300, 'the parts are held, within the credit given');
  await g.send({ type: SEQ, flags: Seq.EOM }, new Uint8Array(50).fill(3));
  await g.send({ type: SEQ, flags: Seq.EOM });
  await g.send({ type: SEQ, flags: Seq.EOM }, new Uint8Array(10).fill(4));
  const first = await nextMessage(program);
  assert.deepEqual(first, new Uint8Array([...new Uint8Array(100).fill(1), ...new Uint8Array(200).fill(2), ...new Uint8Array(50).fill(3)]));
  assert.deepEqual(await nextMessage(program), new Uint8Array(10).fill(4), 'the empty message was not passed on: the host would read it as end of file');
  assert.equal(device.counters.snapshot().device.emptyMessages, 1);
  await until(() => device.counters.snapshot().device.bufferedToHost === 0);
  await g.core.close();
});

test('guest to host: SEQ_EOR goes with its message to the host end', async () => {
  const [ours, program] = duplexPair({ objectMode: true });
  const device = new VsockDevice({ guestCid: CID, host: { connect: () => Promise.reject(new Error('none')), connectSeqpacket: async () => ours } });
  const g = await connected(device);
  await g.send({ type: SEQ, flags: Seq.EOM | Seq.EOR }, new Uint8Array([1, 2]));
  await g.send({ type: SEQ, flags: Seq.EOM }, new Uint8Array([3]));
  const got: SeqpacketMessage[] = [];
  program.on('data', (m: SeqpacketMessage) => got.push(m));
  await until(() => got.length === 2);
  assert.deepEqual(got.map((m) => [[...m.bytes], m.eor]), [[[1, 2], true], [[3], false]]);
  await g.core.close();
});

test('host to guest: each host message arrives as packets within credit, EOM on the last fragment only', async () => {
  const { host, programs } = pairHost();
  const device = new VsockDevice({ guestCid: CID, host });
  const g = await connected(device);
  const program = programs[0];
  // Rx buffers hold 4096 payload bytes: the 10000-byte message takes three.
  const big = new Uint8Array(10_000).map((_, i) => i & 0xff);
  await sendMessage(program, big);
  await sendMessage(program, new Uint8Array([7, 8, 9]));
  await g.until(5);
  const data = g.rx.slice(1);
  assert.deepEqual(data.map((h) => [h.op, h.type, h.len, h.flags]), [
    [Op.RW, SEQ, 4096, 0],
    [Op.RW, SEQ, 4096, 0],
    [Op.RW, SEQ, 1808, Seq.EOM],
    [Op.RW, SEQ, 3, Seq.EOM],
  ]);
  assert.deepEqual(Buffer.concat(g.payloads.slice(1, 4)), Buffer.from(big));
  assert.deepEqual([...g.payloads[4]], [7, 8, 9]);
  await g.core.close();
});

test('host to guest: a message the guest buffer could never hold resets the connection, counted; so does one above the host end limit', async () => {
  const guestLimit = pairHost();
  const device = new VsockDevice({ guestCid: CID, host: guestLimit.host });
  const g = await connected(device, 4096);
  await sendMessage(guestLimit.programs[0], new Uint8Array(4097));
  await g.until(2);
  assert.equal(g.rx[1].op, Op.RST);
  assert.equal(await nextMessage(guestLimit.programs[0]), null, 'the host program sees the connection end');
  assert.equal(device.counters.snapshot().device.oversizeMessages, 1);
  assert.equal(device.connections, 0);
  await g.core.close();

  const hostLimit = pairHost(1000);
  const small = new VsockDevice({ guestCid: CID, host: hostLimit.host });
  const h = await connected(small);
  await sendMessage(hostLimit.programs[0], new Uint8Array(1001));
  await h.until(2);
  assert.equal(h.rx[1].op, Op.RST, 'a reset, not an orderly SHUTDOWN: the message was lost');
  assert.equal(small.counters.snapshot().device.oversizeMessages, 1);
  assert.equal(small.connections, 0);
  await h.core.close();
});

test('guest to host: a message growing past the limit resets the connection, counted, and its held parts are let go', async () => {
  const { host, programs } = pairHost();
  const device = new VsockDevice({ guestCid: CID, host });
  const g = await connected(device);
  await g.send({ type: SEQ }, new Uint8Array(65_536));
  await g.send({ type: SEQ }, new Uint8Array(65_536));
  await g.send({ type: SEQ, flags: Seq.EOM }, new Uint8Array(1));
  await g.until(2);
  assert.equal(g.rx[1].op, Op.RST);
  const counts = device.counters.snapshot().device;
  assert.deepEqual([counts.oversizeMessages, counts.bufferedToHost, device.connections], [1, 0, 0]);
  assert.equal(await nextMessage(programs[0]), null, 'nothing partial reached the host program');
  await g.core.close();
});

test('a packet whose type is not its connection\'s resets it with RST in the packet\'s type; SEQPACKET without the feature is refused', async () => {
  const { host } = pairHost();
  const device = new VsockDevice({ guestCid: CID, host });
  const g = await connected(device);
  await g.send({ type: SocketType.STREAM }, new Uint8Array(5));
  await g.until(2);
  assert.deepEqual([g.rx[1].op, g.rx[1].type], [Op.RST, SocketType.STREAM]);
  assert.equal(device.connections, 0);
  await g.core.close();

  // The driver did not accept VIRTIO_VSOCK_F_SEQPACKET: its SEQPACKET packets are not valid.
  const noSeq = new VsockDevice({ guestCid: CID, host: pairHost().host });
  const h = await rawGuest(noSeq, CID, true, FRAMEWORK_FEATURES | featureBit(VsockFeature.STREAM));
  await h.send({ op: Op.REQUEST, type: SEQ });
  await h.until(1);
  assert.deepEqual([h.rx[0].op, h.rx[0].type], [Op.RST, SEQ]);
  assert.equal(noSeq.counters.snapshot().device.badPackets, 1);
  assert.equal(noSeq.connections, 0);
  const refused = await new Promise<number | Error>((resolve) => noSeq.connectToGuest(5, duplexPair()[0], resolve, SEQ));
  assert.match(String(refused), /did not accept SEQPACKET/);
  await h.core.close();
});

test('SeqpacketStream: a slow reader holds back the writer (callbacks wait), nothing is lost; end() is the reader\'s end of file', async () => {
  const [ours, program] = seqpacketPair();
  const stream = new SeqpacketStream(ours, MAX_MESSAGE);
  let written = 0;
  const COUNT = 40;
  for (let k = 0; k < COUNT; k++) stream.write({ bytes: new Uint8Array(50_000).fill(k), eor: false }, () => written++);
  stream.end();
  await until(() => written > 0);
  assert.ok(written < COUNT, `the socket buffer holds a few messages, not all ${COUNT}`);
  for (let k = 0; k < COUNT; k++) {
    const m = await nextMessage(program);
    assert.equal(m?.length, 50_000);
    assert.equal(m?.[0], k);
  }
  assert.equal(await nextMessage(program), null);
  assert.equal(written, COUNT);
  program.close();
  stream.destroy();
});

test('SeqpacketStream: messages read one chunk each; one above the limit is an OversizeMessage error', async () => {
  const [ours, program] = seqpacketPair();
  const stream = new SeqpacketStream(ours, 100);
  program.send(new Uint8Array([1]));
  program.send(new Uint8Array(100).fill(2));
  program.send(new Uint8Array(101));
  const got: Uint8Array[] = [];
  stream.on('data', (m: Uint8Array) => got.push(m));
  const [err] = (await once(stream, 'error')) as [Error];
  assert.ok(err instanceof OversizeMessage);
  assert.equal(err.length, 101);
  assert.deepEqual(got.map((m) => m.length), [1, 100]);
  program.close();
});

test('PATH.seqpacket: a host program sends CONNECT P as its first message, gets OK <port>, then messages both ways; a bad request is closed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vsock-seq-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const device = new VsockDevice({ guestCid: CID, host: pairHost().host });
  const server = await listenHybrid(device, join(dir, 'v.sock'), pino({ level: 'silent' }));
  const g = await rawGuest(device, CID, true, WANTED);
  const program = await connectSeqpacket(join(dir, 'v.sock.seqpacket'));
  await sendMessage(program, Buffer.from('CONNECT 77\n'));
  await g.until(1);
  const request = g.rx[0];
  assert.deepEqual([request.op, request.type, request.dstPort], [Op.REQUEST, SEQ, 77]);
  await g.send({ op: Op.RESPONSE, type: SEQ, srcPort: 77, dstPort: request.srcPort, bufAlloc: 1 << 20 });
  assert.equal(Buffer.from((await nextMessage(program))!).toString(), `OK ${request.srcPort}\n`);
  await g.send({ type: SEQ, srcPort: 77, dstPort: request.srcPort, flags: Seq.EOM }, new Uint8Array([5, 6]));
  assert.deepEqual(await nextMessage(program), new Uint8Array([5, 6]));
  await sendMessage(program, new Uint8Array([9]));
  await g.until(2);
  assert.deepEqual([g.rx[1].op, g.rx[1].flags, [...g.payloads[1]]], [Op.RW, Seq.EOM, [9]]);
  program.close();

  const bad = await connectSeqpacket(join(dir, 'v.sock.seqpacket'));
  await sendMessage(bad, Buffer.from('CONNECT me\n'));
  assert.equal(await nextMessage(bad), null, 'a request that is not CONNECT P is closed');
  bad.close();
  await g.core.close();
  await server.close();
});
