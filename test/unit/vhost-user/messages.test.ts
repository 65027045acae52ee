import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  BackendRequest,
  FrontendRequest,
  VRING_NOFD_MASK,
  frontendRequestName,
} from '../../../src/transports/vhost-user/constants.ts';
import {
  encodeAck,
  encodeMessage,
  encodeReply,
  messageRules,
  repliesWithAck,
  type Payload,
  type Stream,
} from '../../../src/transports/vhost-user/messages.ts';
import { MessageReader } from '../../../src/transports/vhost-user/reader.ts';
import { payload, withoutReservedBits } from './samples.ts';

/** Decode one whole encoded message on `stream`. */
function decodeOne(stream: Stream, bytes: Uint8Array, fds: readonly number[] = [], xenMmap = false) {
  const reader = new MessageReader(stream);
  reader.setLayout({ xenMmap });
  reader.push(bytes, fds);
  const r = reader.next();
  assert.deepEqual(reader.next(), { type: 'need-more' });
  return r;
}

const STREAMS: readonly [Stream, Record<string, number>][] = [
  ['frontend-requests', FrontendRequest],
  ['frontend-replies', FrontendRequest],
  ['backend-requests', BackendRequest],
  ['backend-replies', BackendRequest],
];

test('every request and reply of both directions round-trips through encoder and reader', () => {
  for (const [stream, requests] of STREAMS) {
    for (const [name, request] of Object.entries(requests)) {
      const rules = messageRules(stream, request);
      assert.ok(rules !== undefined, `${stream} ${name} has rules`);
      for (const kind of rules.kinds) {
        for (const xenMmap of [false, true]) {
          fc.assert(
            fc.property(payload(kind, xenMmap).map((p) => withoutReservedBits(stream, request, p)), fc.boolean(), (p: Payload, needReply) => {
              const [min] = rules.fds(p);
              const fds = Array.from({ length: min }, (_, i) => 100 + i);
              const replying = stream.endsWith('replies');
              const encoded = encodeMessage(stream, { request, payload: p, fds, needReply: !replying && needReply }, { xenMmap });
              const r = decodeOne(stream, encoded.bytes, encoded.fds, xenMmap);
              assert.equal(r.type, 'message', `${stream} ${name} ${kind}: ${r.type === 'error' ? r.error.message : r.type}`);
              if (r.type !== 'message') return;
              assert.equal(r.message.request, request);
              assert.equal(r.message.needReply, !replying && needReply);
              assert.deepEqual(r.message.fds, fds);
              // A size-ambiguous alternative (a 0-region table is a u64's size) decodes as the first.
              if (!(kind === 'memory-table' && p.kind === 'memory-table' && p.regions.length === 0 && rules.kinds[0] === 'u64')) {
                assert.deepEqual(r.message.payload, p);
              }
            }),
            { numRuns: 20 },
          );
        }
      }
    }
  }
});

test('a SET_MEM_TABLE request carries one descriptor per region and decodes to typed regions', () => {
  const regions = [
    { guestAddr: 0n, size: 0x8000_0000n, userAddr: 0x7f00_0000_0000n, mmapOffset: 0n },
    { guestAddr: 0x1_0000_0000n, size: 0x4000_0000n, userAddr: 0x7f80_0000_0000n, mmapOffset: 0x8000_0000n },
  ];
  const { bytes, fds } = encodeMessage('frontend-requests', { request: FrontendRequest.SET_MEM_TABLE, payload: { kind: 'memory-table', regions }, fds: [10, 11] });
  assert.equal(bytes.length, 12 + 8 + 2 * 32);
  const r = decodeOne('frontend-requests', bytes, fds);
  assert.ok(r.type === 'message' && r.message.request === FrontendRequest.SET_MEM_TABLE);
  assert.deepEqual(r.message.payload, { kind: 'memory-table', regions });
  assert.deepEqual(r.message.fds, [10, 11]);
});

test('the header is request, flags (version 1, REPLY, NEED_REPLY) and size, little-endian', () => {
  const { bytes } = encodeMessage('frontend-requests', {
    request: FrontendRequest.SET_VRING_NUM,
    payload: { kind: 'vring-state', index: 1, num: 256 },
    needReply: true,
  });
  assert.deepEqual([...bytes], [8, 0, 0, 0, 0x9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]);
  const ack = encodeAck('frontend-replies', FrontendRequest.SET_VRING_NUM, 1n);
  assert.deepEqual([...ack.bytes], [8, 0, 0, 0, 0x5, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
});

test('kick, call and err carry a descriptor unless the no-fd bit is set', () => {
  const kick = (value: bigint, fds: number[]) =>
    decodeOne('frontend-requests', encodeMessage('frontend-requests', { request: FrontendRequest.SET_VRING_KICK, payload: { kind: 'u64', value }, fds }).bytes, fds);
  assert.equal(kick(3n, [5]).type, 'message');
  assert.equal(kick(3n | VRING_NOFD_MASK, []).type, 'message');
  assert.throws(() => encodeMessage('frontend-requests', { request: FrontendRequest.SET_VRING_CALL, payload: { kind: 'u64', value: 0n } }), /carries 1 descriptors, not 0/);
});

test('replies: explicit bodies where the table has them, u64 acknowledgements elsewhere', () => {
  assert.equal(repliesWithAck('frontend-requests', FrontendRequest.SET_VRING_ADDR), true);
  assert.equal(repliesWithAck('frontend-requests', FrontendRequest.GET_VRING_BASE), false);
  assert.equal(repliesWithAck('frontend-requests', FrontendRequest.GET_CONFIG), false);
  assert.equal(repliesWithAck('frontend-requests', 999), true, 'an unknown request can only be acknowledged');
  const unknown = decodeOne('frontend-replies', encodeAck('frontend-replies', 999, 1n).bytes);
  assert.ok(unknown.type === 'error' && unknown.error.rule === 'unknown-request' && !unknown.error.fatal);
  assert.deepEqual([...encodeAck('frontend-replies', 999, 1n).bytes.subarray(0, 8)], [0xe7, 3, 0, 0, 5, 0, 0, 0]);
  const base = encodeReply('frontend-replies', FrontendRequest.GET_VRING_BASE, { kind: 'vring-state', index: 0, num: 42 });
  const r = decodeOne('frontend-replies', base.bytes);
  assert.ok(r.type === 'message');
  assert.deepEqual(r.message.payload, { kind: 'vring-state', index: 0, num: 42 });
  // A zero-length GET_CONFIG reply is the back-end's way to say it failed.
  const failed = decodeOne('frontend-replies', encodeReply('frontend-replies', FrontendRequest.GET_CONFIG, { kind: 'empty' }).bytes);
  assert.ok(failed.type === 'message' && failed.message.payload.kind === 'empty');
  // SHARED_OBJECT_LOOKUP: a descriptor exactly when the front-end answers success.
  assert.equal(encodeReply('backend-replies', BackendRequest.SHARED_OBJECT_LOOKUP, { kind: 'u64', value: 0n }, [7]).fds.length, 1);
  assert.throws(() => encodeReply('backend-replies', BackendRequest.SHARED_OBJECT_LOOKUP, { kind: 'u64', value: 1n }, [7]), RangeError);
});

test('the encoder refuses what the decoder would refuse', () => {
  assert.throws(() => encodeMessage('frontend-requests', { request: 99, payload: { kind: 'empty' } }), /front-end request 99 is not a request type/);
  assert.throws(() => encodeMessage('frontend-requests', { request: FrontendRequest.SET_FEATURES, payload: { kind: 'empty' } }), /carries u64, not empty/);
  assert.throws(() => encodeMessage('frontend-requests', { request: FrontendRequest.SET_FEATURES, payload: { kind: 'u64', value: 2n ** 64n } }), /does not fit 64 bits/);
  assert.throws(
    () => encodeMessage('frontend-requests', { request: FrontendRequest.SET_CONFIG, payload: { kind: 'config', offset: 0, flags: 0, data: new Uint8Array(257) } }),
    /257 bytes exceeds 256/,
  );
  assert.throws(() => encodeMessage('frontend-replies', { request: FrontendRequest.SET_FEATURES, payload: { kind: 'u64', value: 0n }, needReply: true }), /cannot ask for a reply/);
  assert.equal(frontendRequestName(FrontendRequest.ADD_MEM_REG), 'VHOST_USER_ADD_MEM_REG');
});
