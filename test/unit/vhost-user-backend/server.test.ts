/**
 * The listening side: one front-end at a time, the next one served once the first goes away,
 * stale sockets replaced, and a clean close.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { vhostUserBlkDevice } from '../../../src/devices/blk/device.ts';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { FileBackend } from '../../../src/storage/file-backend.ts';
import { IoThreads } from '../../../src/storage/io-thread.ts';
import { connectUnix, UnixListener, type UnixSocket } from '../../../src/native/unix-socket.ts';
import { whenReadable } from '../../../src/native/readiness.ts';
import { closeFd } from '../../../src/native/fd.ts';
import { SocketPathError } from '../../../src/transports/socket-server.ts';
import { BackendServer } from '../../../src/transports/vhost-user/backend-server.ts';
import { FrontendRequest as F } from '../../../src/transports/vhost-user/constants.ts';
import { encodeMessage } from '../../../src/transports/vhost-user/messages.ts';
import { MessageReader } from '../../../src/transports/vhost-user/reader.ts';

const log = pino({ level: 'silent' });

async function queueNum(socket: UnixSocket): Promise<bigint> {
  socket.send(encodeMessage('frontend-requests', { request: F.GET_QUEUE_NUM, payload: { kind: 'empty' } }).bytes);
  const reader = new MessageReader('frontend-replies');
  for (;;) {
    const next = reader.next();
    if (next.type === 'message' && next.message.payload.kind === 'u64') return next.message.payload.value;
    await whenReadable(socket.fd);
    const got = socket.receive();
    if (got !== null) reader.push(got.bytes, got.fds);
  }
}

test('front-ends are served one at a time; the next is served when the first leaves', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-server-'));
  const path = join(dir, 'vu.sock');
  const server = BackendServer.listen(new RngDevice(), { socketPath: path }, log);
  try {
    const first = await connectUnix(path);
    assert.equal(await queueNum(first), 1n);
    const firstSession = server.session!;
    // The second connects (it waits in the backlog) and is answered only after the first leaves.
    const second = await connectUnix(path);
    let answered = false;
    const secondAnswer = queueNum(second).then((n) => {
      answered = true;
      return n;
    });
    assert.equal(await queueNum(first), 1n, 'the first front-end is still served');
    assert.equal(answered, false);
    first.close();
    await firstSession.ended;
    assert.equal(await secondAnswer, 1n);
    second.close();
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.ok(!existsSync(path), 'closing the server removes its socket');
});

test('a stale socket at the path is replaced; any other file is refused with a sentence naming it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-server-'));
  try {
    const stale = join(dir, 'stale.sock');
    // Close the descriptor but leave the file behind, as a killed process would.
    closeFd(UnixListener.listen(stale).fd);
    assert.ok(existsSync(stale));
    const server = BackendServer.listen(new RngDevice(), { socketPath: stale }, log);
    const socket = await connectUnix(stale);
    assert.equal(await queueNum(socket), 1n);
    socket.close();
    await server.close();

    const file = join(dir, 'data');
    writeFileSync(file, 'precious');
    assert.throws(() => BackendServer.listen(new RngDevice(), { socketPath: file }, log), SocketPathError);
    assert.ok(existsSync(file));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a blk back-end starts its I/O thread when a front-end connects, not before, ahead of any request', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-server-'));
  const path = join(dir, 'vu.sock');
  const image = join(dir, 'disk.img');
  writeFileSync(image, new Uint8Array(64 * 1024));
  const threads = new IoThreads(1);
  const backend = await FileBackend.open(image, { sharedThreads: threads });
  const server = BackendServer.listen(vhostUserBlkDevice(backend), { socketPath: path }, log);
  try {
    assert.equal(threads.started, 0, 'listening alone starts no thread');
    const socket = await connectUnix(path);
    assert.equal(await queueNum(socket), 1n);
    assert.equal(threads.running, 1, 'the connected front-end finds the thread started');
    socket.close();
  } finally {
    await server.close();
    await backend.close();
    await threads.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
