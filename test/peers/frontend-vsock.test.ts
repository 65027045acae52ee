/**
 * paravirt's vsock driver over the vhost-user front-end against `paravirt serve vsock`, a
 * separate process, with its host side on Unix sockets (hybrid vsock): a guest connection to
 * port P reaches the program listening on PATH_P, and a host program's `CONNECT P` reaches the
 * driver's listener on port P. SEQPACKET connections (§5.10.6.6) go through the Unix
 * SOCK_SEQPACKET host ends: the listener PATH_P one way, `CONNECT P` on PATH.seqpacket the other.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { VsockDriver } from '../../src/devices/vsock/driver.ts';
import { MAX_MESSAGE, type SeqpacketMessage } from '../../src/devices/vsock/wire.ts';
import { UnixListener, connectSeqpacket } from '../../src/native/unix-socket.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { readAll, writeAll } from '../lab/streams.ts';
import { nextMessage, readMessages, sendMessage } from '../lab/seqpacket.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const log = pino({ level: 'warn' });
const MiB = 1 << 20;

function sha(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

async function serveVsock(t: TestContext): Promise<{ dir: string; uds: string; driver: VsockDriver }> {
  const dir = mkdtempSync(join(tmpdir(), 'fe-vsock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'vhost.sock');
  const uds = join(dir, 'v.sock');
  const backend = new PeerProcess('paravirt serve vsock', [process.execPath, PARAVIRT, 'serve', 'vsock', '--socket-path', socketPath, '--guest-cid', '9', '--uds-path', uds], { textStdout: true });
  t.after(() => backend.stop());
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  const driver = await VsockDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.VSOCK, log }), { log });
  return { dir, uds, driver };
}

/** A host program listening on `path`, and its first connection to come. */
async function hostListener(t: TestContext, path: string): Promise<{ connection: Promise<Socket> }> {
  const server = createServer({ allowHalfOpen: true });
  t.after(() => server.close());
  server.listen(path);
  await once(server, 'listening');
  return { connection: once(server, 'connection').then(([s]) => s as Socket) };
}

test('vsock driver against `paravirt serve vsock`: 16 MiB each way at once through one connection with matching sha256, the host reading slowly', async (t) => {
  const { uds, driver } = await serveVsock(t);
  assert.equal(driver.guestCid, 9);
  const accepted = await hostListener(t, `${uds}_5000`);
  const guest = await driver.connect(5000);
  const host = await accepted.connection;
  const up = randomBytes(16 * MiB);
  const down = randomBytes(16 * MiB);
  const [gotUp, gotDown] = await Promise.all([readAll(host, { slowChunk: 16 * 1024 }), readAll(guest), writeAll(guest, up), writeAll(host, down)]);
  assert.equal(sha(gotUp), sha(up));
  assert.equal(sha(gotDown), sha(down));
  await driver.close();
});

test('vsock host to guest: CONNECT P reaches the listener on port P, answered OK <port>, then the stream', async (t) => {
  const { uds, driver } = await serveVsock(t);
  const accepted = new Promise<Duplex>((resolve) => driver.listen(1234, resolve));
  const program = connect({ path: uds, allowHalfOpen: true });
  await once(program, 'connect');
  program.write('CONNECT 1234\n');
  const [first] = (await once(program, 'data')) as [Buffer];
  assert.match(first.toString(), /^OK \d+\n$/);
  const guest = await accepted;
  const data = randomBytes(4 * MiB);
  const [got] = await Promise.all([readAll(guest), writeAll(program, data)]);
  assert.equal(sha(got), sha(data));

  const refused = connect(uds);
  await once(refused, 'connect');
  refused.write('CONNECT 4321\n');
  await once(refused, 'close');
  assert.equal(refused.bytesRead, 0, 'nothing listens on guest port 4321: the host program is closed without an answer');
  await driver.close();
});

/** Messages across the 4 KiB rx buffer, the 64 KiB packet and up to the 128 KiB message limit. */
const SIZES = [1, 4097, 65537, 100_000, MAX_MESSAGE, 3, MAX_MESSAGE - 1];

test('vsock SEQPACKET: guest to a PATH_P SOCK_SEQPACKET listener and back, every message whole and in order', async (t) => {
  const { uds, driver } = await serveVsock(t);
  assert.equal(driver.seqpacket, true, 'paravirt serve vsock offers VIRTIO_VSOCK_F_SEQPACKET');
  const listener = UnixListener.listenSeqpacket(`${uds}_6000`);
  t.after(() => listener.close());
  const [guest, program] = await Promise.all([driver.connectSeqpacket(6000), listener.accept()]);
  t.after(() => program.close());
  const up = SIZES.map((n) => randomBytes(n));
  for (const bytes of up) guest.write({ bytes, eor: true } satisfies SeqpacketMessage);
  for (const bytes of up) assert.equal(sha((await nextMessage(program)) ?? new Uint8Array(0)), sha(bytes));
  const down = SIZES.map((n) => randomBytes(n));
  const [got] = await Promise.all([readMessages(guest, down.length), (async () => { for (const m of down) await sendMessage(program, m); })()]);
  assert.deepEqual(got.map((m) => sha(m.bytes)), down.map(sha));
  await driver.close();
});

test('vsock SEQPACKET host to guest: CONNECT P on PATH.seqpacket reaches listenSeqpacket, then messages both ways', async (t) => {
  const { uds, driver } = await serveVsock(t);
  const accepted = new Promise<Duplex>((resolve) => driver.listenSeqpacket(1235, resolve));
  const program = await connectSeqpacket(`${uds}.seqpacket`);
  t.after(() => program.close());
  await sendMessage(program, Buffer.from('CONNECT 1235\n'));
  assert.match(Buffer.from((await nextMessage(program)) ?? []).toString(), /^OK \d+\n$/);
  const guest = await accepted;
  const down = SIZES.map((n) => randomBytes(n));
  const [got] = await Promise.all([readMessages(guest, down.length), (async () => { for (const m of down) await sendMessage(program, m); })()]);
  assert.deepEqual(got.map((m) => sha(m.bytes)), down.map(sha));
  // Echoed back message by message: boundaries kept the other way too.
  for (const m of got) guest.write(m);
  for (const m of down) assert.equal(sha((await nextMessage(program)) ?? new Uint8Array(0)), sha(m));
  await driver.close();
});
