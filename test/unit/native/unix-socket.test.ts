import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  MAX_MESSAGE, type ReceivedMessage, type SeqpacketSocket, UnixListener, connectSeqpacket, connectUnix, seqpacketPair, socketPair, type UnixSocket, type Received,
} from '../../../src/native/unix-socket.ts';
import { createMemfd } from '../../../src/native/memfd.ts';
import { Mapping, PAGE_SIZE } from '../../../src/native/mapping.ts';
import { EventFd } from '../../../src/native/eventfd.ts';
import { closeFd } from '../../../src/native/fd.ts';
import { whenReadable } from '../../../src/native/readiness.ts';
import { SyscallError } from '../../../src/native/syscall-error.ts';

async function receiveNext(s: UnixSocket, maxFds?: number): Promise<Received> {
  for (;;) {
    const r = s.receive(undefined, maxFds);
    if (r !== null) return r;
    await whenReadable(s.fd);
  }
}

test('a memfd passed with SCM_RIGHTS can be mapped by the receiver and shares its bytes', async () => {
  const [a, b] = socketPair();
  const fd = createMemfd('passed', PAGE_SIZE);
  const mine = Mapping.shared(fd, PAGE_SIZE);
  mine.bytes.set([9, 8, 7]);
  assert.equal(a.send(new Uint8Array([1, 2, 3]), [fd]), 3);
  const got = await receiveNext(b);
  closeFd(fd);
  assert.deepEqual([...got.bytes], [1, 2, 3]);
  assert.equal(got.fds.length, 1);
  assert.notEqual(got.fds[0], fd);
  const theirs = Mapping.shared(got.fds[0], PAGE_SIZE);
  assert.deepEqual([...theirs.bytes.subarray(0, 3)], [9, 8, 7]);
  theirs.bytes[100] = 42;
  assert.equal(mine.bytes[100], 42);
  theirs.unmap();
  mine.unmap();
  closeFd(got.fds[0]);
  a.close();
  b.close();
});

test('descriptors beyond what the receiver wants are closed and counted', async () => {
  const [a, b] = socketPair();
  const events = [EventFd.create(), EventFd.create(), EventFd.create()];
  a.send(new Uint8Array([0]), events.map((e) => e.fd));
  const got = await receiveNext(b, 1);
  assert.equal(got.fds.length, 1);
  assert.equal(got.discardedFds, 2);
  assert.equal(got.truncated, false);
  // The kept descriptor is a working eventfd shared with the sender's.
  const kept = EventFd.adopt(got.fds[0]);
  events[0].signal(5n);
  assert.equal(kept.take(), 5n);
  kept.close();
  for (const e of events) e.close();
  a.close();
  b.close();
});

test('EOF is an empty receive and sending to a closed peer is EPIPE, not a signal', async () => {
  const [a, b] = socketPair();
  a.close();
  const got = await receiveNext(b);
  assert.equal(got.bytes.length, 0);
  assert.throws(
    () => b.send(new Uint8Array([1])),
    (e: unknown) => e instanceof SyscallError && e.syscall === 'sendmsg' && e.code === 'EPIPE',
  );
  b.close();
});

test('listen, connect and accept on a path; the listener removes its path when closed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-sock-'));
  const path = join(dir, 'vhost.sock');
  const listener = UnixListener.listen(path);
  assert.throws(() => UnixListener.listen(path), (e: unknown) => e instanceof SyscallError && e.code === 'EADDRINUSE');
  const [client, server] = await Promise.all([connectUnix(path), listener.accept()]);
  client.send(new TextEncoder().encode('hello'));
  const got = await receiveNext(server);
  assert.equal(new TextDecoder().decode(got.bytes), 'hello');
  client.close();
  server.close();
  listener.close();
  await assert.rejects(connectUnix(path), (e: unknown) => e instanceof SyscallError && e.syscall === 'connect' && e.code === 'ENOENT');
  rmSync(dir, { recursive: true });
});

test('socket paths that do not fit sockaddr_un are refused with a sentence naming them', () => {
  assert.throws(() => UnixListener.listen('/tmp/' + 'x'.repeat(200)), /socket path "\/tmp\/x+" must be 1 to 107 bytes/);
});

test('a listening socket adopted by descriptor accepts connections and leaves its path alone', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-sock-'));
  const path = join(dir, 'adopted.sock');
  const bound = UnixListener.listen(path);
  const adopted = UnixListener.fromFd(bound.fd);
  assert.equal(adopted.path, null);
  const [client, server] = await Promise.all([connectUnix(path), adopted.accept()]);
  client.send(new Uint8Array([7]));
  assert.deepEqual([...(await receiveNext(server)).bytes], [7]);
  client.close();
  server.close();
  adopted.close(); // closes the shared descriptor; the path stays
  assert.ok(existsSync(path));
  rmSync(dir, { recursive: true });
});

async function nextMessage(s: SeqpacketSocket, maxBytes?: number): Promise<ReceivedMessage> {
  for (;;) {
    const r = s.receive(maxBytes);
    if (r !== null) return r;
    await whenReadable(s.fd);
  }
}

test('SOCK_SEQPACKET: each send is received whole and alone; one longer than the buffer is refused before the system call, one longer than the kernel carries is EMSGSIZE', async () => {
  const [a, b] = seqpacketPair();
  const sizes = [1, 5000, 70_000, 200_000, 3];
  for (const [k, size] of sizes.entries()) {
    assert.equal(a.send(new Uint8Array(size).fill(k + 1)), true);
    const got = await nextMessage(b);
    assert.equal(got.length, size);
    assert.equal(got.bytes.length, size);
    assert.equal(got.bytes.every((x) => x === k + 1), true, `message ${k} is its own bytes`);
  }
  assert.equal(b.receive(), null, 'nothing more waits');
  assert.throws(() => a.send(new Uint8Array(MAX_MESSAGE + 1)), /exceeds the 262144 bytes/);
  assert.throws(() => a.send(new Uint8Array(MAX_MESSAGE)), /EMSGSIZE/);
  a.close();
  b.close();
});

test('SOCK_SEQPACKET: a message longer than the receiver asked for is consumed whole and reported truncated (MSG_TRUNC)', async () => {
  const [a, b] = seqpacketPair();
  a.send(new Uint8Array(1000).fill(7));
  a.send(new Uint8Array([1, 2]));
  const cut = await nextMessage(b, 100);
  assert.deepEqual([cut.bytes.length, cut.length], [100, 1000]);
  const next = await nextMessage(b, 100);
  assert.deepEqual([...next.bytes], [1, 2], 'the rest of the long message is gone, the next one is whole');
  a.close();
  b.close();
});

test('SOCK_SEQPACKET: a full socket refuses a message whole (false), never a part; shutdownWrite is end of file after the messages sent', async () => {
  const [a, b] = seqpacketPair();
  let sent = 0;
  while (a.send(new Uint8Array(60_000).fill(sent & 0xff))) sent++;
  assert.ok(sent > 0, 'some messages fit');
  a.shutdownWrite();
  for (let k = 0; k < sent; k++) {
    const got = await nextMessage(b);
    assert.equal(got.length, 60_000);
    assert.equal(got.bytes[59_999], k & 0xff);
  }
  assert.equal((await nextMessage(b)).length, 0, 'end of file');
  b.close();
  assert.throws(() => a.send(new Uint8Array(1)), (e: unknown) => e instanceof SyscallError);
  a.close();
});

test('SOCK_SEQPACKET listen, connect and accept on a path', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'seqpacket-'));
  const path = join(dir, 's');
  const listener = UnixListener.listenSeqpacket(path);
  const [client, server] = await Promise.all([connectSeqpacket(path), listener.accept()]);
  client.send(new Uint8Array([1, 2, 3]));
  client.send(new Uint8Array([4]));
  assert.deepEqual([...(await nextMessage(server)).bytes], [1, 2, 3]);
  assert.deepEqual([...(await nextMessage(server)).bytes], [4]);
  await assert.rejects(connectUnix(path), /connect/, 'a stream socket cannot connect to a SEQPACKET listener');
  client.close();
  server.close();
  listener.close();
  assert.equal(existsSync(path), false);
  rmSync(dir, { recursive: true, force: true });
});
