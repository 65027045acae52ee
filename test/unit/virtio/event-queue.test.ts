import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BYTE_STREAM, type EventLayout, EventQueue, type EventQueueOptions, ONE_PER_BUFFER } from '../../../src/virtio/event-queue.ts';
import { DescriptorChain, VirtqueueError } from '../../../src/virtio/queue.ts';
import { ScriptQueue, context } from './framework-fixture.ts';

/** A posted buffer of `len` writable bytes whose contents the test can read back. */
function buffer(id: number, len: number): { chain: DescriptorChain; bytes: Uint8Array } {
  const bytes = new Uint8Array(len);
  return { chain: new DescriptorChain(id, 1, [], [bytes], 0, len), bytes };
}

/** `n` posted buffers of `len` bytes, ids from 0. */
function buffers(n: number, len: number): { chains: DescriptorChain[]; bytes: Uint8Array[] } {
  const all = Array.from({ length: n }, (_, i) => buffer(i, len));
  return { chains: all.map((b) => b.chain), bytes: all.map((b) => b.bytes) };
}

function records(options: Partial<EventQueueOptions<Uint8Array>> = {}, available: DescriptorChain[] = []) {
  const q = new ScriptQueue(available);
  const c = context(q);
  const dropped: [number, string][] = [];
  const eq = new EventQueue<Uint8Array>(c.ctx, 0, {
    layout: ONE_PER_BUFFER,
    backlog: 4,
    overflow: 'drop',
    onDrop: (e, reason) => dropped.push([e[0], reason]),
    ...options,
  });
  return { q, eq, dropped, ...c };
}

/**
 * A frame with a one-byte header counting the buffers it spans, written across as many buffers
 * as it needs, each filled completely but the last (virtio-net's MRG_RXBUF, §5.1.6.4).
 */
const MERGED: EventLayout<Uint8Array> = {
  fit(frame, held) {
    const need = 1 + frame.length;
    if (held.bytes < need) return 'more';
    let count = 1;
    for (let bytes = held.writable(0); bytes < need; count++) bytes += held.writable(count);
    return count;
  },
  write(frame, writers) {
    writers[0].write(Uint8Array.of(writers.length));
    let at = 0;
    for (const w of writers) at += w.write(frame.subarray(at));
    return undefined;
  },
};

test('fixed-size events wait for buffers, then go one per buffer in order, published once with one notification', () => {
  const { q, eq, notified } = records();
  assert.equal(eq.offer(Uint8Array.of(1, 1)), true);
  assert.equal(eq.offer(Uint8Array.of(2, 2)), true);
  assert.equal(eq.waiting, 2);
  assert.equal(q.notificationsOn, true, 'waiting for buffers, the device asks to be told of them');
  const { chains, bytes } = buffers(3, 4);
  q.available.push(...chains);
  eq.kick();
  assert.equal(eq.waiting, 0);
  assert.deepEqual(q.used, [[0, 2], [1, 2]]);
  assert.deepEqual([...bytes[0]], [1, 1, 0, 0]);
  assert.deepEqual([...bytes[1]], [2, 2, 0, 0]);
  assert.equal(q.calls.filter((c) => c === 'publish').length, 1);
  assert.deepEqual(notified, [0]);
  assert.equal(q.available.length, 1, 'a buffer no event needs stays with the driver');
});

test('the driver is notified only when publish says it asked to be (event suppression)', () => {
  const { q, eq, notified } = records({}, buffers(2, 4).chains);
  q.driverWantsNotify = false;
  eq.offer(Uint8Array.of(1));
  assert.deepEqual(q.used, [[0, 1]]);
  assert.deepEqual(notified, []);
});

test('the queue counts used buffers, bytes written and notifications sent or suppressed', () => {
  const { q, eq, ctx } = records({ layout: MERGED }, buffers(4, 4).chains);
  eq.offer(new Uint8Array(5)); // header + 5 bytes: two buffers
  q.driverWantsNotify = false;
  eq.offer(new Uint8Array(1));
  assert.deepEqual(ctx.counters.snapshot().queues[0], {
    requests: 3,
    readBytes: 0,
    writtenBytes: 8,
    errors: 0,
    ringFaults: 0,
    notifications: 1,
    suppressed: 1,
  });
});

test('with burst, the offers of one synchronous run share one publish and one notification, after them', async () => {
  const { q, eq, notified } = records({ burst: true, backlog: 8 }, buffers(4, 4).chains);
  for (const i of [1, 2, 3]) eq.offer(Uint8Array.of(i));
  assert.deepEqual(q.used, [[0, 1], [1, 1], [2, 1]], 'each event is written into its buffer as it is offered');
  assert.equal(q.calls.filter((c) => c === 'publish').length, 0, 'nothing published yet');
  await Promise.resolve();
  assert.equal(q.calls.filter((c) => c === 'publish').length, 1);
  assert.deepEqual(notified, [0]);
  eq.offer(Uint8Array.of(4));
  eq.queueStopping();
  assert.equal(q.calls.filter((c) => c === 'publish').length, 2, 'a stopping queue gets what the burst wrote first');
});

test('an event that takes one buffer is written with the same writer every time', () => {
  const seen: unknown[] = [];
  const layout: EventLayout<Uint8Array> = { fit: () => 1, write: (_, writers) => void seen.push(writers[0], writers) };
  const { eq } = records({ layout }, buffers(2, 4).chains);
  eq.offer(Uint8Array.of(1));
  eq.offer(Uint8Array.of(2));
  assert.equal(seen[0], seen[2], 'one writer');
  assert.equal(seen[1], seen[3], 'one array');
});

test('a buffer made available while notifications are re-enabled is popped, not slept on (§2.7.10)', () => {
  const { q, eq } = records();
  q.lateArrivals = [buffer(0, 4).chain];
  eq.offer(Uint8Array.of(7));
  assert.deepEqual(q.used, [[0, 1]]);
  assert.equal(eq.waiting, 0);
});

test('a full backlog drops further events and counts them; posted buffers then take the waiting ones in order', () => {
  const { q, eq, dropped } = records({ backlog: 2 });
  const accepted = [1, 2, 3, 4].map((i) => eq.offer(Uint8Array.of(i)));
  assert.deepEqual(accepted, [true, true, false, false]);
  assert.equal(eq.waiting, 2);
  assert.deepEqual(eq.dropped, { noBuffer: 2, tooLarge: 0 });
  assert.deepEqual(dropped, [[3, 'noBuffer'], [4, 'noBuffer']]);
  const { chains, bytes } = buffers(4, 1);
  q.available.push(...chains);
  eq.kick();
  assert.deepEqual(bytes.slice(0, 2).map((b) => b[0]), [1, 2]);
  assert.equal(eq.offer(Uint8Array.of(5)), true, 'room again');
  assert.deepEqual(q.used.map(([id]) => id), [0, 1, 2]);
});

test('a record larger than the next buffer is dropped as too large; the buffer serves the next record', () => {
  const { q, eq } = records({}, buffers(1, 2).chains);
  eq.offer(Uint8Array.of(1, 2, 3));
  eq.offer(Uint8Array.of(4));
  assert.deepEqual(eq.dropped, { noBuffer: 0, tooLarge: 1 });
  assert.deepEqual(q.used, [[0, 1]]);
});

test('a buffer shorter than minBuffer is the driver breaking the contract: the queue fails', () => {
  const { eq, failed, q } = records({ minBuffer: { bytes: 8, rule: 'record buffer too small' } }, [buffer(0, 4).chain]);
  eq.offer(Uint8Array.of(1));
  assert.equal(failed.length, 1);
  assert.ok(failed[0] instanceof VirtqueueError);
  assert.match(failed[0].message, /^record buffer too small: 4 writable bytes, fewer than the 8/);
  assert.deepEqual(q.used, []);
  assert.equal(eq.waiting, 0, 'the backlog of a failed queue is emptied');
});

test('a ring fault fails the queue once; held buffers are forgotten and never pushed, later events go nowhere', () => {
  const { q, eq, failed, ctl } = records({ layout: MERGED }, buffers(1, 4).chains);
  eq.offer(new Uint8Array(6)); // needs two buffers: holds buffer 0 and waits
  assert.equal(eq.count, 1);
  const fault = new VirtqueueError('descriptor index out of range', 'head 99');
  q.pop = () => {
    throw fault;
  };
  eq.kick();
  assert.deepEqual(failed, [fault]);
  assert.equal(eq.count, 0);
  assert.equal(eq.waiting, 0);
  assert.equal(ctl.live, false);
  eq.offer(Uint8Array.of(1));
  eq.kick();
  assert.deepEqual(q.used, []);
  assert.equal(failed.length, 1);
});

test('a reset while buffers are held: they are never pushed, to the old queue or to a new one', () => {
  const old = new ScriptQueue(buffers(1, 4).chains);
  const fresh = new ScriptQueue([]);
  let current: ScriptQueue | undefined = old;
  const { ctx } = context(old);
  const eq = new EventQueue<Uint8Array>({ ...ctx, queue: () => current }, 0, { layout: MERGED, backlog: 4, overflow: 'drop' });
  eq.offer(new Uint8Array(6));
  assert.equal(eq.count, 1, 'buffer 0 is held');
  current = undefined; // reset
  eq.kick();
  assert.equal(eq.count, 0);
  assert.equal(eq.waiting, 0, 'events offered for the old queue are forgotten');
  current = fresh; // the driver set the queue up again
  fresh.available.push(...buffers(2, 4).chains);
  eq.offer(new Uint8Array(3));
  assert.deepEqual(old.used, []);
  assert.deepEqual(fresh.used, [[0, 4]], 'the new queue serves from its own buffers');
});

test('an event spanning several buffers waits until they are all posted, then takes them together', () => {
  const { q, eq } = records({ layout: MERGED }, buffers(1, 4).chains);
  const frame = Uint8Array.from({ length: 10 }, (_, i) => 10 + i);
  eq.offer(frame);
  assert.deepEqual(q.used, [], 'never half-written');
  const more = [buffer(1, 4), buffer(2, 4), buffer(3, 4)];
  q.available.push(...more.map((b) => b.chain));
  eq.kick();
  assert.deepEqual(q.used, [[0, 4], [1, 4], [2, 3]]);
  assert.equal(eq.count, 0);
  assert.equal(q.available.length, 1, 'the fourth buffer is not needed');
  assert.equal(more[0].bytes[0], 13);
});

test('an event larger than a whole ring of buffers is dropped; the held buffers serve the next', () => {
  const { q, eq } = records({ layout: MERGED }, buffers(16, 2).chains);
  eq.offer(new Uint8Array(40));
  assert.deepEqual(eq.dropped, { noBuffer: 0, tooLarge: 1 });
  eq.offer(Uint8Array.of(9));
  assert.deepEqual(q.used, [[0, 2]], 'the oldest held buffer goes first (IN_ORDER)');
});

test('a layout choosing an impossible buffer count is a device bug: the queue fails instead of writing', () => {
  const bad: EventLayout<Uint8Array> = { fit: () => 5, write: () => undefined };
  const { q, eq, failed } = records({ layout: bad }, buffers(2, 4).chains);
  eq.offer(Uint8Array.of(1));
  assert.equal(failed.length, 1);
  assert.deepEqual(q.used, []);
});

test('back-pressure: a stream is refused, not dropped, when the backlog is full, and told when there is room', () => {
  const { q, eq } = records({ layout: BYTE_STREAM, backlog: 1, overflow: 'refuse', onSpace: () => spaces++ });
  let spaces = 0;
  assert.equal(eq.offer(Uint8Array.of(1, 2, 3)), true);
  assert.equal(eq.offer(Uint8Array.of(4)), false);
  assert.deepEqual(eq.dropped, { noBuffer: 0, tooLarge: 0 });
  assert.equal(spaces, 0);
  const { chains, bytes } = buffers(1, 2);
  q.available.push(...chains);
  eq.kick();
  assert.equal(spaces, 0, 'the rest of the chunk still fills the backlog');
  q.available.push(buffer(1, 2).chain);
  eq.kick();
  assert.equal(spaces, 1);
  assert.deepEqual([...bytes[0]], [1, 2]);
  assert.deepEqual(q.used, [[0, 2], [1, 1]]);
  assert.equal(eq.offer(Uint8Array.of(4)), true);
  eq.kick();
  assert.equal(spaces, 1, 'told once per refusal');
});

test('a stream offered from the space callback continues in the same drain without recursion', () => {
  const chunks = [Uint8Array.of(1), Uint8Array.of(2), Uint8Array.of(3)];
  const { q, eq } = records({ layout: BYTE_STREAM, backlog: 1, overflow: 'refuse', onSpace: () => pump() });
  const pump = (): void => {
    while (chunks.length > 0 && eq.offer(chunks[0])) chunks.shift();
  };
  pump();
  q.available.push(...buffers(3, 4).chains);
  eq.kick();
  assert.deepEqual(chunks, []);
  assert.deepEqual(q.used, [[0, 1], [1, 1], [2, 1]]);
});

test('property: a stream split across any buffers arrives in order, waits only for buffers, and back-pressure loses nothing', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 40 }), { maxLength: 20 }),
      fc.array(fc.integer({ min: 1, max: 16 }), { minLength: 1, maxLength: 60 }),
      fc.integer({ min: 1, max: 4 }),
      (chunks, sizes, backlog) => {
        const pending = chunks.slice();
        const { q, eq, failed } = records({ layout: BYTE_STREAM, backlog, overflow: 'refuse', onSpace: () => pump() });
        const pump = (): void => {
          while (pending.length > 0 && eq.offer(pending[0])) pending.shift();
        };
        pump();
        const posted = sizes.map((len, id) => buffer(id, len));
        // The driver posts a few buffers at a time (at most a ring of them outstanding).
        for (let i = 0; i < posted.length; i += 3) {
          q.available.push(...posted.slice(i, i + 3).map((b) => b.chain));
          eq.kick();
        }
        assert.deepEqual(failed, []);
        const got = q.used.flatMap(([id, len]) => [...posted[id].bytes.subarray(0, len)]);
        const sent = chunks.flatMap((c) => [...c]);
        assert.deepEqual(got, sent.slice(0, got.length), 'a prefix of the stream, nothing skipped or repeated');
        assert.deepEqual(q.used.map(([id]) => id), q.used.map((_, i) => i), 'buffers used in the order posted');
        if (got.length < sent.length) {
          assert.equal(q.available.length + eq.count, 0, 'the stream waits only when every posted buffer is used');
          assert.equal(pending.length + eq.waiting > 0, true, 'and the rest is still there, nothing dropped');
        }
        assert.deepEqual(eq.dropped, { noBuffer: 0, tooLarge: 0 });
      },
    ),
  );
});

test('property: IN_ORDER holds for merged events of any size, whatever is dropped', () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 30 }),
      fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 50 }),
      (frames, sizes) => {
        const { q, eq, failed } = records({ layout: MERGED, backlog: 8 });
        const posted = sizes.map((len, id) => buffer(id, len));
        let next = 0;
        for (const [i, n] of frames.entries()) {
          eq.offer(new Uint8Array(n).fill(i));
          // Keep at most a ring (16) of buffers outstanding, as a driver must.
          const room = 16 - (q.available.length + eq.count);
          const add = posted.slice(next, next + Math.min(room, 2));
          next += add.length;
          q.available.push(...add.map((b) => b.chain));
          eq.kick();
        }
        assert.deepEqual(failed, []);
        assert.deepEqual(q.used.map(([id]) => id), q.used.map((_, i) => i), 'used in pop order');
        const total = eq.dropped.noBuffer + eq.dropped.tooLarge + eq.waiting;
        let events = 0;
        for (let at = 0; at < q.used.length; at += posted[q.used[at][0]].bytes[0]) events++;
        assert.equal(events + total, frames.length, 'every event delivered, waiting or counted as dropped');
      },
    ),
  );
});

test('a producer refused before the queue failed is told there is room: what it offers now goes nowhere, as after any failure', () => {
  let spaces = 0;
  const { q, eq, failed } = records({ layout: BYTE_STREAM, backlog: 1, overflow: 'refuse', onSpace: () => spaces++ }, [buffer(0, 1).chain]);
  eq.offer(Uint8Array.of(1, 2)); // one byte written, one waits
  assert.equal(eq.offer(Uint8Array.of(3)), false);
  q.pop = () => {
    throw new VirtqueueError('descriptor loop', 'head 0');
  };
  eq.kick();
  assert.equal(failed.length, 1);
  assert.equal(spaces, 1, 'a stalled producer is not left waiting forever');
  assert.deepEqual(q.used, [[0, 1]]);
});

test('withdrawn events never reach a buffer; the others keep their order, and a refused producer hears of the room', () => {
  let space = 0;
  const { q, eq } = records({ backlog: 3, overflow: 'refuse', onSpace: () => space++ });
  for (const id of [1, 2, 3]) assert.equal(eq.offer(Uint8Array.of(id)), true);
  assert.equal(eq.offer(Uint8Array.of(4)), false, 'the backlog is full');
  assert.equal(eq.withdraw((e) => e[0] === 2), 1);
  assert.equal(space, 1, 'withdrawing made room');
  assert.equal(eq.withdraw((e) => e[0] === 9), 0);
  const { chains, bytes } = buffers(3, 1);
  q.available.push(...chains);
  eq.kick();
  assert.deepEqual(bytes.map((b) => b[0]), [1, 3, 0]);
  assert.equal(eq.waiting, 0);
});

test('with retain, a lent event is written straight into posted buffers, and copied only when it has to wait', () => {
  const retained: number[] = [];
  const { q, eq } = records({ retain: (e) => (retained.push(e[0]), e.slice()) }, [buffer(0, 4).chain]);
  const lent = Uint8Array.of(1, 1);
  eq.offer(lent);
  assert.deepEqual(retained, [], 'a buffer was there: no copy');
  const waiting = Uint8Array.of(2, 2);
  eq.offer(waiting);
  waiting.fill(9); // the lender reuses its buffer once offer() returns
  assert.deepEqual(retained, [2]);
  const { chains, bytes } = buffers(1, 4);
  q.available.push(...chains);
  eq.kick();
  assert.deepEqual([...bytes[0]], [2, 2, 0, 0], 'what was offered, not what the lender wrote later');
});

test('a stopping queue gets its held buffers back unused, newest first; the event waits and is written when the queue runs again', () => {
  const { chains, bytes } = buffers(2, 4);
  const { q, eq } = records({ layout: MERGED }, chains);
  // A 9-byte frame needs 10 bytes: the two 4-byte buffers are held, waiting for a third.
  eq.offer(new Uint8Array(9).fill(7));
  assert.equal(q.inFlight, 2);
  eq.queueStopping();
  assert.deepEqual(q.calls.filter((c) => c.startsWith('unpop')), ['unpop 1', 'unpop 0']);
  assert.equal(q.inFlight, 0);
  assert.deepEqual(q.used, [], 'nothing was used');
  assert.equal(eq.waiting, 1);
  // Running again (the same queue after a pause): the buffers are popped again, with a third.
  q.available.push(buffer(2, 4).chain);
  eq.kick();
  assert.deepEqual(q.used, [[0, 4], [1, 4], [2, 2]]);
  assert.deepEqual([...bytes[0]], [3, 7, 7, 7]);
});
