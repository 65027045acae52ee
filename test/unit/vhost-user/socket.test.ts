import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FrontendRequest, MAX_FDS } from '../../../src/transports/vhost-user/constants.ts';
import { encodeMessage } from '../../../src/transports/vhost-user/messages.ts';
import { MessageReader } from '../../../src/transports/vhost-user/reader.ts';
import { socketPair, type UnixSocket } from '../../../src/native/unix-socket.ts';
import { createMemfd } from '../../../src/native/memfd.ts';
import { Mapping, PAGE_SIZE } from '../../../src/native/mapping.ts';
import { EventFd } from '../../../src/native/eventfd.ts';
import { closeAll, closeFd } from '../../../src/native/fd.ts';
import { whenReadable } from '../../../src/native/readiness.ts';

/** Read from `socket` into `reader` until it yields something other than need-more. */
async function nextMessage(socket: UnixSocket, reader: MessageReader<'frontend-requests'>) {
  for (;;) {
    const r = reader.next();
    if (r.type !== 'need-more') return r;
    let got = socket.receive(undefined, MAX_FDS);
    while (got === null) {
      await whenReadable(socket.fd);
      got = socket.receive(undefined, MAX_FDS);
    }
    reader.push(got.bytes, got.fds, got.truncated || got.discardedFds > 0);
  }
}

test('a memory table sent over a real socket arrives with its memfd, which maps the front-end bytes', async () => {
  const [frontEnd, backEnd] = socketPair();
  const fd = createMemfd('guest-ram', 4 * PAGE_SIZE);
  const ram = Mapping.shared(fd, 4 * PAGE_SIZE);
  ram.bytes.set([0xde, 0xad], PAGE_SIZE);
  const msg = encodeMessage('frontend-requests', {
    request: FrontendRequest.SET_MEM_TABLE,
    payload: { kind: 'memory-table', regions: [{ guestAddr: 0x10_0000n, size: BigInt(4 * PAGE_SIZE), userAddr: 0x7f00_0000n, mmapOffset: 0n }] },
    fds: [fd],
  });
  assert.equal(frontEnd.send(msg.bytes, msg.fds), msg.bytes.length);
  const r = await nextMessage(backEnd, new MessageReader('frontend-requests'));
  assert.ok(r.type === 'message' && r.message.request === FrontendRequest.SET_MEM_TABLE);
  const [region] = r.message.payload.regions;
  const mapped = Mapping.shared(r.message.fds[0], Number(region.size), { offset: Number(region.mmapOffset) });
  assert.deepEqual([...mapped.bytes.subarray(PAGE_SIZE, PAGE_SIZE + 2)], [0xde, 0xad]);
  mapped.unmap();
  ram.unmap();
  closeAll([fd, ...r.message.fds]);
  frontEnd.close();
  backEnd.close();
});

test('the kernel delivers descriptors as the reader attributes them, however messages coalesce', async () => {
  const [frontEnd, backEnd] = socketPair();
  const kick = EventFd.create();
  const call = EventFd.create();
  const owner = encodeMessage('frontend-requests', { request: FrontendRequest.SET_OWNER, payload: { kind: 'empty' } });
  const setKick = encodeMessage('frontend-requests', { request: FrontendRequest.SET_VRING_KICK, payload: { kind: 'u64', value: 0n }, fds: [kick.fd] });
  const setCall = encodeMessage('frontend-requests', { request: FrontendRequest.SET_VRING_CALL, payload: { kind: 'u64', value: 0n }, fds: [call.fd] });
  const features = encodeMessage('frontend-requests', { request: FrontendRequest.GET_FEATURES, payload: { kind: 'empty' } });
  // Four sendmsg calls before the back-end reads anything: reads may glue them.
  for (const m of [owner, setKick, setCall, features]) assert.equal(frontEnd.send(m.bytes, m.fds), m.bytes.length);
  const reader = new MessageReader('frontend-requests');
  const got: { request: number; fds: readonly number[] }[] = [];
  while (got.length < 4) {
    const r = await nextMessage(backEnd, reader);
    assert.ok(r.type === 'message', r.type === 'error' ? r.error.message : r.type);
    got.push({ request: r.message.request, fds: r.message.fds });
  }
  assert.deepEqual(
    got.map((m) => [m.request, m.fds.length]),
    [
      [FrontendRequest.SET_OWNER, 0],
      [FrontendRequest.SET_VRING_KICK, 1],
      [FrontendRequest.SET_VRING_CALL, 1],
      [FrontendRequest.GET_FEATURES, 0],
    ],
  );
  // The received descriptors are the sender's eventfds.
  const receivedKick = EventFd.adopt(got[1].fds[0]);
  kick.signal(2n);
  assert.equal(receivedKick.take(), 2n);
  receivedKick.close();
  closeFd(got[2].fds[0]);
  kick.close();
  call.close();
  frontEnd.close();
  backEnd.close();
});
