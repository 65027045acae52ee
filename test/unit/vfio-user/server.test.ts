/**
 * The vfio-user server on a real socket: messages split and glued anyhow are framed whole, the
 * descriptors of a read go to the last message beginning in it, a client breaking the framing is
 * disconnected with one log line, and the next client is served by the same device.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { createMemfd } from '../../../src/native/memfd.ts';
import { whenReadable } from '../../../src/native/readiness.ts';
import { connectUnix, type UnixSocket } from '../../../src/native/unix-socket.ts';
import { VirtioPciFunction } from '../../../src/transports/pci-device/virtio-pci.ts';
import { MessageFramer } from '../../../src/transports/vfio-user/framer.ts';
import { Command, HEADER_SIZE } from '../../../src/transports/vfio-user/protocol.ts';
import { VfioUserServer } from '../../../src/transports/vfio-user/server.ts';
import { encode, fields, quiet, reply, versionPayload, type Reply } from './helpers.ts';

test('framer: split and glued messages come out whole; a read\'s descriptors go to the last message beginning in it', () => {
  const framer = new MessageFramer();
  const a = encode(1, Command.DMA_UNMAP, new Uint8Array(24));
  const b = encode(2, Command.DMA_MAP, new Uint8Array(32));
  const both = new Uint8Array([...a, ...b]);
  framer.push(both.subarray(0, 5), []);
  assert.ok('needMore' in framer.next());
  framer.push(both.subarray(5), [77]);
  const first = framer.next();
  const second = framer.next();
  assert.ok('message' in first && 'message' in second);
  assert.deepEqual(first.message.fds, []);
  assert.deepEqual(second.message.fds, [77]);
  assert.ok('needMore' in framer.next());

  const bad = new MessageFramer();
  const huge = encode(3, Command.REGION_WRITE, new Uint8Array(0));
  new DataView(huge.buffer).setUint32(4, 0xffff_ffff, true);
  bad.push(huge, [5]);
  const fatal = bad.next();
  assert.ok('fatal' in fatal);
  assert.deepEqual(fatal.fds, [5], 'the descriptors come back to be closed');
});

async function roundTrip(socket: UnixSocket, bytes: Uint8Array, fds: number[] = []): Promise<Reply> {
  assert.equal(socket.send(bytes, fds), bytes.length);
  let got = new Uint8Array(0);
  for (;;) {
    await whenReadable(socket.fd);
    const r = socket.receive();
    assert.ok(r !== null && r.bytes.length > 0, 'the server answers');
    got = new Uint8Array([...got, ...r.bytes]);
    if (got.length >= HEADER_SIZE && got.length >= new DataView(got.buffer).getUint32(4, true)) return reply(got);
  }
}

async function hungUp(socket: UnixSocket): Promise<boolean> {
  for (;;) {
    await whenReadable(socket.fd);
    const r = socket.receive();
    if (r !== null && r.bytes.length === 0) return true;
  }
}

test('a client that breaks the framing is disconnected and the next client is served', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-'));
  const socketPath = join(dir, 'rng.sock');
  const server = VfioUserServer.listen(new VirtioPciFunction(new RngDevice(), quiet), { socketPath }, quiet);
  t.after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const hostile = await connectUnix(socketPath);
  assert.equal((await roundTrip(hostile, encode(0, Command.VERSION, versionPayload()))).header.error, 0);
  const memfd = createMemfd('ram', 0x10000);
  const map = await roundTrip(hostile, encode(1, Command.DMA_MAP, fields([4, 32], [4, 3], [8, 0], [8, 0], [8, 0x10000])), [memfd]);
  assert.equal(map.header.error, 0);
  // A header claiming 4 GiB: the stream cannot be framed any more.
  const huge = encode(2, Command.REGION_WRITE, new Uint8Array(16));
  new DataView(huge.buffer).setUint32(4, 0xffff_ffff, true);
  hostile.send(huge);
  assert.ok(await hungUp(hostile), 'the server hangs up');
  hostile.close();

  const next = await connectUnix(socketPath);
  t.after(() => next.close());
  assert.equal((await roundTrip(next, encode(0, Command.VERSION, versionPayload()))).header.error, 0);
  const config = await roundTrip(next, encode(1, Command.REGION_READ, fields([8, 0], [4, 7], [4, 4])));
  assert.equal(config.view.getUint16(16, true), 0x1af4, 'the next client reads the configuration space');
});
