import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { FrontendRequest } from '../../../src/transports/vhost-user/constants.ts';
import { encodeMessage, type Stream } from '../../../src/transports/vhost-user/messages.ts';
import { MessageReader, type ReadResult } from '../../../src/transports/vhost-user/reader.ts';
import { validMessage } from './samples.ts';

interface Segment {
  readonly bytes: Uint8Array;
  readonly fds: readonly number[];
}

/**
 * What recvmsg returns for a stream of sendmsg segments, read `sizes` bytes at a time: Linux
 * delivers a segment's descriptors with the first read that touches it and ends that read at
 * the end of the segment (or earlier, at the read size).
 */
function* kernelReads(segments: readonly Segment[], sizes: readonly number[]): Generator<Segment> {
  let seg = 0;
  let off = 0;
  let turn = 0;
  while (seg < segments.length) {
    let room = sizes[turn++ % sizes.length];
    const parts: Uint8Array[] = [];
    let fds: readonly number[] = [];
    while (room > 0 && seg < segments.length) {
      const s = segments[seg];
      const take = Math.min(room, s.bytes.length - off);
      const carriesFds = off === 0 && s.fds.length > 0;
      if (carriesFds) fds = s.fds;
      parts.push(s.bytes.subarray(off, off + take));
      off += take;
      room -= take;
      if (off === s.bytes.length) {
        seg++;
        off = 0;
      }
      if (carriesFds) break;
    }
    yield { bytes: Buffer.concat(parts), fds };
  }
}

/** Drain `reader` of everything it can yield now. */
function drain<S extends Stream>(reader: MessageReader<S>): ReadResult<unknown>[] {
  const out: ReadResult<unknown>[] = [];
  for (;;) {
    const r = reader.next();
    if (r.type === 'need-more') return out;
    out.push(r);
    if (r.type === 'error' && r.error.fatal) return out;
  }
}

for (const stream of ['frontend-requests', 'frontend-replies', 'backend-requests', 'backend-replies'] as const) {
  test(`${stream}: messages split or coalesced anyhow come out whole, each with its own descriptors`, () => {
    fc.assert(
      fc.property(
        fc.array(validMessage(stream), { minLength: 1, maxLength: 12 }),
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 8 }),
        (messages, sizes) => {
          let nextFd = 0;
          const sent = messages.map((m) => {
            const fds = m.fds.map(() => nextFd++);
            return { ...m, fds, encoded: encodeMessage(stream, { ...m, fds }) };
          });
          const reader = new MessageReader(stream);
          const got: ReadResult<unknown>[] = [];
          for (const read of kernelReads(sent.map((s) => s.encoded), sizes)) {
            reader.push(read.bytes, read.fds);
            got.push(...drain(reader));
          }
          assert.equal(got.length, sent.length);
          got.forEach((r, i) => {
            assert.ok(r.type === 'message', r.type === 'error' ? r.error.message : r.type);
            const m = r.message as { request: number; fds: readonly number[]; needReply: boolean };
            assert.equal(m.request, sent[i].request);
            assert.deepEqual(m.fds, sent[i].fds);
            assert.equal(m.needReply, sent[i].needReply);
          });
          assert.deepEqual(reader.takePendingFds(), []);
        },
      ),
      { numRuns: 150 },
    );
  });
}

test('a message fed one byte at a time asks for more until its last byte', () => {
  const { bytes, fds } = encodeMessage('frontend-requests', {
    request: FrontendRequest.SET_MEM_TABLE,
    payload: { kind: 'memory-table', regions: [{ guestAddr: 0n, size: 4096n, userAddr: 0n, mmapOffset: 0n }] },
    fds: [3],
  });
  const reader = new MessageReader('frontend-requests');
  for (let i = 0; i < bytes.length; i++) {
    reader.push(bytes.subarray(i, i + 1), i === 0 ? fds : []);
    const r = reader.next();
    if (i < bytes.length - 1) {
      assert.deepEqual(r, { type: 'need-more' });
      assert.equal(reader.buffered, i + 1);
    } else {
      assert.ok(r.type === 'message' && r.message.fds[0] === 3);
      assert.equal(reader.buffered, 0);
    }
  }
});

const anyStream = fc.constantFrom<Stream>('frontend-requests', 'frontend-replies', 'backend-requests', 'backend-replies');

/** Bytes that often look like vhost-user headers, so payload checks get exercised too. */
const plausibleMessage = fc
  .record({
    request: fc.oneof(fc.integer({ min: 0, max: 45 }), fc.nat({ max: 0xffff_ffff })),
    flags: fc.oneof(fc.constantFrom(1, 5, 9, 13, 0, 2, 0x11), fc.nat({ max: 0xffff_ffff })),
    payload: fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ minLength: 200, maxLength: 400 })),
    lie: fc.option(fc.nat({ max: 0xffff_ffff }), { freq: 5 }),
  })
  .map(({ request, flags, payload, lie }) => {
    const bytes = new Uint8Array(12 + payload.length);
    const v = new DataView(bytes.buffer);
    v.setUint32(0, request, true);
    v.setUint32(4, flags, true);
    v.setUint32(8, lie ?? payload.length, true);
    bytes.set(payload, 12);
    return bytes;
  });

test('arbitrary input never throws: every read yields a message, a request for more, or an error', () => {
  fc.assert(
    fc.property(
      anyStream,
      fc.boolean(),
      fc.array(
        fc.record({
          bytes: fc.oneof(fc.uint8Array({ maxLength: 300 }), plausibleMessage),
          fds: fc.array(fc.nat({ max: 1000 }), { maxLength: 3 }),
          lost: fc.integer({ min: 0, max: 19 }).map((n) => n === 0),
        }),
        { maxLength: 20 },
      ),
      (stream, xenMmap, reads) => {
        const reader = new MessageReader(stream);
        reader.setLayout({ xenMmap });
        const handedOut: number[] = [];
        let received = 0;
        for (const read of reads) {
          received += read.fds.length;
          reader.push(read.bytes, read.fds, read.lost);
          for (let i = 0; i < 1000; i++) {
            const r = reader.next();
            assert.ok(r.type === 'message' || r.type === 'need-more' || r.type === 'error');
            if (r.type === 'need-more') break;
            handedOut.push(...(r.type === 'message' ? r.message.fds : r.error.fds));
            if (r.type === 'error' && r.error.fatal) break;
          }
        }
        // Every descriptor is handed out exactly once: in a message, an error, or at the end.
        handedOut.push(...reader.takePendingFds());
        assert.equal(handedOut.length, received);
      },
    ),
    { numRuns: 400 },
  );
});
