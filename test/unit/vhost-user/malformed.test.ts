import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FrontendRequest, MAX_PAYLOAD_SIZE } from '../../../src/transports/vhost-user/constants.ts';
import { encodeMessage, type ProtocolRule, type Stream } from '../../../src/transports/vhost-user/messages.ts';
import { MessageReader } from '../../../src/transports/vhost-user/reader.ts';

/** A raw message: header fields and payload bytes exactly as given, no validation. */
function raw(request: number, flags: number, payload: Uint8Array | number[] = [], size?: number): Uint8Array {
  const body = Uint8Array.from(payload);
  const bytes = new Uint8Array(12 + body.length);
  const v = new DataView(bytes.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size ?? body.length, true);
  bytes.set(body, 12);
  return bytes;
}

function u64(value: bigint): number[] {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, value, true);
  return [...b];
}

function le32(...words: number[]): number[] {
  const b = new Uint8Array(words.length * 4);
  words.forEach((w, i) => new DataView(b.buffer).setUint32(i * 4, w, true));
  return [...b];
}

/** A memory table payload of `count` (claimed) regions built from [guest, size, user, offset]. */
function table(count: number, regions: bigint[][]): number[] {
  return [...le32(count, 0), ...regions.flatMap((r) => r.flatMap(u64))];
}

const V1 = 0x1;
const REPLY = 0x4;

/**
 * Feed `bytes` then a valid message (SET_OWNER, or a GET_FEATURES reply on a reply stream);
 * expect `rule` first, then (unless fatal) the valid message.
 */
function expectRule(rule: ProtocolRule, bytes: Uint8Array, fds: number[] = [], options: { fatal?: boolean; stream?: Stream } = {}): void {
  const reader = new MessageReader(options.stream ?? 'frontend-requests');
  reader.push(bytes, fds);
  const replies = options.stream === 'frontend-replies';
  const follow = replies ? FrontendRequest.GET_FEATURES : FrontendRequest.SET_OWNER;
  reader.push(replies ? raw(follow, V1 | REPLY, u64(1n)) : raw(follow, V1));
  const r = reader.next();
  assert.equal(r.type, 'error', `expected ${rule}, got ${r.type}`);
  if (r.type !== 'error') return;
  assert.equal(r.error.rule, rule, r.error.message);
  assert.equal(r.error.fatal, options.fatal === true);
  assert.deepEqual([...r.error.fds], fds, 'the error hands over the descriptors that came with it');
  assert.ok(r.error.message.startsWith(`${rule}: `));
  const after = reader.next();
  if (options.fatal === true) {
    assert.equal(after.type, 'error', 'a fatal error is sticky');
    assert.ok(after.type === 'error' && after.error.fds.length === 0, 'descriptors are handed over only once');
  } else {
    assert.ok(after.type === 'message' && after.message.request === follow, 'the stream stays framed after a skipped message');
  }
}

test('framing: wrong version and oversized payloads are fatal', () => {
  expectRule('header-version', raw(FrontendRequest.SET_OWNER, 0x2), [], { fatal: true });
  expectRule('header-version', raw(FrontendRequest.SET_OWNER, 0x0), [], { fatal: true });
  expectRule('payload-too-large', raw(FrontendRequest.SET_OWNER, V1, [], MAX_PAYLOAD_SIZE + 1), [], { fatal: true });
  expectRule('payload-too-large', raw(FrontendRequest.SET_OWNER, V1, [], 0xffff_ffff), [], { fatal: true });
});

test('header flags: unknown bits, replies where requests belong and the reverse', () => {
  expectRule('header-flags', raw(FrontendRequest.SET_OWNER, V1 | 0x10));
  expectRule('unexpected-reply', raw(FrontendRequest.SET_OWNER, V1 | REPLY));
  expectRule('missing-reply-flag', raw(FrontendRequest.GET_FEATURES, V1, u64(1n)), [], { stream: 'frontend-replies' });
  expectRule('header-flags', raw(FrontendRequest.GET_FEATURES, V1 | REPLY | 0x8, u64(1n)), [], { stream: 'frontend-replies' });
});

test('unknown request types are reported as such, with their descriptors', () => {
  expectRule('unknown-request', raw(0, V1));
  expectRule('unknown-request', raw(44, V1, [1, 2, 3]), [42]);
  expectRule('unknown-request', raw(0xffff_ffff, V1));
});

test('payload sizes must be exactly what the request type needs', () => {
  expectRule('payload-size', raw(FrontendRequest.SET_VRING_NUM, V1, [0, 0, 0, 0]));
  expectRule('payload-size', raw(FrontendRequest.SET_FEATURES, V1, [...u64(1n), 0]));
  expectRule('payload-size', raw(FrontendRequest.GET_FEATURES, V1, u64(0n)));
  expectRule('payload-size', raw(FrontendRequest.SET_VRING_ADDR, V1, new Array(32).fill(0)));
  expectRule('payload-size', raw(FrontendRequest.SET_LOG_BASE, V1, new Array(12).fill(0)));
  expectRule('payload-size', raw(FrontendRequest.ADD_MEM_REG, V1, new Array(32).fill(0)), [3]);
  // Claims 2 regions, carries 1.
  expectRule('payload-size', raw(FrontendRequest.SET_MEM_TABLE, V1, table(2, [[0n, 4096n, 0n, 0n]])), [3, 4]);
  expectRule('payload-size', raw(FrontendRequest.SET_MEM_TABLE, V1, [1, 0, 0]));
});

test('descriptor counts must match the request type', () => {
  expectRule('fd-count', raw(FrontendRequest.GET_FEATURES, V1), [7]);
  expectRule('fd-count', raw(FrontendRequest.SET_VRING_KICK, V1, u64(0n)));
  expectRule('fd-count', raw(FrontendRequest.SET_VRING_KICK, V1, u64(0x100n)), [7]);
  expectRule('fd-count', raw(FrontendRequest.SET_BACKEND_REQ_FD, V1), [7, 8]);
  expectRule('fd-count', raw(FrontendRequest.SET_MEM_TABLE, V1, table(2, [[0n, 4096n, 0n, 0n], [8192n, 4096n, 0n, 4096n]])), [3]);
  expectRule('fd-count', raw(FrontendRequest.SET_LOG_BASE, V1, [...u64(4096n), ...u64(0n)]));
});

test('memory tables: at most 8 regions, none empty, none wrapping past 2^64', () => {
  const nine = Array.from({ length: 9 }, (_, i) => [BigInt(i) * 4096n, 4096n, 0n, 0n]);
  expectRule('region-count', raw(FrontendRequest.SET_MEM_TABLE, V1, table(9, nine)), [1, 2, 3, 4, 5, 6, 7, 8]);
  expectRule('region-count', raw(FrontendRequest.SET_MEM_TABLE, V1, table(0xffff_ffff, [])));
  expectRule('region-empty', raw(FrontendRequest.SET_MEM_TABLE, V1, table(1, [[0n, 0n, 0n, 0n]])), [3]);
  const top = 2n ** 64n - 4096n;
  expectRule('region-overflow', raw(FrontendRequest.SET_MEM_TABLE, V1, table(1, [[top, 8192n, 0n, 0n]])), [3]);
  expectRule('region-overflow', raw(FrontendRequest.SET_MEM_TABLE, V1, table(1, [[0n, 8192n, top, 0n]])), [3]);
  expectRule('region-overflow', raw(FrontendRequest.ADD_MEM_REG, V1, [...u64(0n), ...u64(0n), ...u64(8192n), ...u64(0n), ...u64(top)]), [3]);
  // Exactly reaching 2^64 does not wrap.
  const ok = new MessageReader('frontend-requests');
  ok.push(raw(FrontendRequest.SET_MEM_TABLE, V1, table(1, [[top, 4096n, top, top]])), [3]);
  assert.equal(ok.next().type, 'message');
});

test('config accesses: at most 256 bytes, sized as declared, not wrapping', () => {
  expectRule('config-size', raw(FrontendRequest.SET_CONFIG, V1, [...le32(0, 257, 0), ...new Array(257).fill(0)]));
  expectRule('payload-size', raw(FrontendRequest.SET_CONFIG, V1, [...le32(0, 8, 0), 1, 2, 3]));
  expectRule('payload-size', raw(FrontendRequest.GET_CONFIG, V1, [0, 0, 0]));
  expectRule('config-range', raw(FrontendRequest.SET_CONFIG, V1, [...le32(0xffff_fffe, 4, 0), 1, 2, 3, 4]));
});

test('reserved bits of kick/call/err are refused', () => {
  expectRule('reserved-bits', raw(FrontendRequest.SET_VRING_CALL, V1, u64(0x200n)), [5]);
  expectRule('reserved-bits', raw(FrontendRequest.SET_VRING_ERR, V1, u64(1n << 63n)), [5]);
});

test('descriptors must arrive with the first byte of their message', () => {
  const msg = encodeMessage('frontend-requests', { request: FrontendRequest.SET_VRING_KICK, payload: { kind: 'u64', value: 0n }, fds: [5] });
  // Descriptors with a read that holds only the middle of the message.
  const mid = new MessageReader('frontend-requests');
  mid.push(msg.bytes.subarray(0, 4));
  mid.push(msg.bytes.subarray(4, 10), [5]);
  mid.push(msg.bytes.subarray(10));
  const r = mid.next();
  assert.ok(r.type === 'error' && r.error.rule === 'fds-without-message' && r.error.fatal);
  assert.deepEqual(r.error.fds, [5]);
  // A second batch of descriptors inside a message that already had its own.
  const twice = new MessageReader('frontend-requests');
  twice.push(msg.bytes.subarray(0, 4), [5]);
  twice.push(msg.bytes.subarray(4, 10), [8]);
  twice.push(msg.bytes.subarray(10));
  const t = twice.next();
  assert.ok(t.type === 'error' && t.error.rule === 'fds-without-message');
  assert.deepEqual(t.error.fds, [5, 8]);
  // Descriptors with no bytes at all.
  const empty = new MessageReader('frontend-requests');
  empty.push(new Uint8Array(0), [6]);
  const e = empty.next();
  assert.ok(e.type === 'error' && e.error.rule === 'fds-without-message');
  assert.deepEqual(e.error.fds, [6]);
});

test('descriptors the socket dropped make the stream fatal, handing back what did arrive', () => {
  const reader = new MessageReader('frontend-requests');
  reader.push(raw(FrontendRequest.SET_OWNER, V1));
  reader.push(raw(FrontendRequest.SET_LOG_FD, V1), [9], true);
  const r = reader.next();
  assert.ok(r.type === 'error' && r.error.rule === 'fds-truncated' && r.error.fatal);
  assert.deepEqual(r.error.fds, [9]);
  assert.ok(reader.next().type === 'error');
});

test('pending descriptors can be taken back when the connection closes mid-message', () => {
  const reader = new MessageReader('frontend-requests');
  const msg = encodeMessage('frontend-requests', { request: FrontendRequest.SET_LOG_FD, payload: { kind: 'empty' }, fds: [11] });
  reader.push(msg.bytes.subarray(0, 5), msg.fds);
  assert.deepEqual(reader.next(), { type: 'need-more' });
  assert.deepEqual(reader.takePendingFds(), [11]);
  assert.deepEqual(reader.takePendingFds(), []);
});
