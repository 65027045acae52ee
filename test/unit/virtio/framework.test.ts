import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DescFlag, Feature, featureBit } from '../../../src/virtio/constants.ts';
import { FRAMEWORK_FEATURES } from '../../../src/virtio/features.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { DescriptorChain, VirtqueueError } from '../../../src/virtio/queue.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';
import { LATER, QueueServer } from '../../../src/virtio/serve.ts';
import type { Request } from '../../../src/virtio/serve.ts';
import { ScriptQueue, ScriptedDevice, chain, context, deferred } from './framework-fixture.ts';
import { DATA, RawRing } from './split-ring-fixture.ts';
import { SplitDeviceQueue } from '../../../src/virtio/split-ring.ts';
import { allQueues } from './all-queues.ts';

test('notifications are off while the queue drains and back on at the end; a buffer that slipped in is served', () => {
  const q = new ScriptQueue([chain(0), chain(1)]);
  q.lateArrivals = [chain(2)];
  const { ctx, notified } = context(q);
  const seenOn: boolean[] = [];
  new QueueServer(ctx, 0, () => void seenOn.push(q.notificationsOn)).kick();
  assert.deepEqual(seenOn, [false, false, false], 'every request ran with notifications off');
  assert.deepEqual(q.calls, [
    'disable', 'pop', 'push 0', 'pop', 'push 1', 'pop', 'publish', 'enable',
    'disable', 'pop', 'push 2', 'pop', 'publish', 'enable',
  ]);
  assert.equal(q.notificationsOn, true);
  assert.deepEqual(notified, [0, 0]);
});

/**
 * Let the event loop turn until `done` holds (each turn runs the queue server's poll, if any);
 * a million turns without it is a failure, not a hang.
 */
async function turnsUntil(done: () => boolean): Promise<void> {
  for (let turns = 0; !done(); turns++) {
    assert.ok(turns < 1_000_000, 'the condition never held');
    await new Promise((r) => setImmediate(r));
  }
}

/**
 * Serve `kicks` requests one kick each, back to back: requests this close together grow the poll
 * window (it doubles from a few microseconds per request that came after it) up to the budget.
 */
function busyKicks(server: QueueServer, q: ScriptQueue, kicks: number, firstId = 0): void {
  for (let i = 0; i < kicks; i++) {
    q.available.push(chain(firstId + i));
    server.kick();
  }
}

test('with a poll budget, requests coming close together make the server poll with notifications off', async () => {
  const q = new ScriptQueue([]);
  const { ctx, ctl } = context(q, 0n, 1_000_000);
  const served: number[] = [];
  const server = new QueueServer(ctx, 0, (req) => void served.push(req.chain.id));
  busyKicks(server, q, 24);
  assert.equal(served.length, 24);
  assert.equal(q.notificationsOn, false, 'the server polls instead of waiting for a kick');
  // The driver adds a buffer and, seeing notifications off, does not kick: a poll finds it.
  q.available.push(chain(100));
  await turnsUntil(() => served.length === 25);
  assert.equal(served[24], 100);
  ctl.live = false; // a reset: polling ends
  const calls = q.calls.length;
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  assert.equal(q.calls.length, calls, 'a reset queue is not touched again');
});

test('when the poll window runs out, notifications go back on and an idle queue is left alone', async () => {
  const q = new ScriptQueue([]);
  const { ctx } = context(q, 0n, 100);
  const server = new QueueServer(ctx, 0, () => {});
  busyKicks(server, q, 10);
  await turnsUntil(() => q.notificationsOn);
  const calls = q.calls.length;
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  assert.equal(q.calls.length, calls, 'an idle queue is not polled');
  assert.deepEqual(q.calls.slice(-3), ['disable', 'pop', 'enable'], 'the last look found nothing and re-armed');
});

test('with a poll budget, a buffer that slips in while notifications are re-enabled is still served (§2.7.10)', async () => {
  const q = new ScriptQueue([]);
  const { ctx } = context(q, 0n, 100);
  const served: number[] = [];
  const server = new QueueServer(ctx, 0, (req) => void served.push(req.chain.id));
  busyKicks(server, q, 10);
  q.lateArrivals = [chain(100)];
  await turnsUntil(() => served.length === 11);
  await turnsUntil(() => q.notificationsOn);
  assert.equal(served[10], 100);
});

test('the first request after a quiet spell does not start polling', () => {
  const q = new ScriptQueue([chain(0)]);
  const { ctx } = context(q, 0n, 1_000_000);
  new QueueServer(ctx, 0, () => {}).kick();
  assert.deepEqual(q.calls, ['disable', 'pop', 'push 0', 'pop', 'publish', 'enable']);
  assert.equal(q.notificationsOn, true);
});

test('a kick that finds nothing does not start polling', () => {
  const q = new ScriptQueue([]);
  const { ctx } = context(q, 0n, 1_000_000);
  new QueueServer(ctx, 0, () => {}).kick();
  assert.deepEqual(q.calls, ['disable', 'pop', 'enable']);
  assert.equal(q.notificationsOn, true);
});

test('synchronous completions share one publish, and the driver is notified only when publish says so', () => {
  const q = new ScriptQueue([chain(0), chain(1), chain(2)]);
  q.driverWantsNotify = false;
  const { ctx, notified } = context(q);
  new QueueServer(ctx, 0, (req) => void req.writer.write(new Uint8Array([1, 2]))).kick();
  assert.equal(q.calls.filter((c) => c === 'publish').length, 1);
  assert.deepEqual(q.used, [[0, 2], [1, 2], [2, 2]], 'the used length is what the handler wrote');
  assert.deepEqual(notified, []);
});

test('a long drain publishes every 64 chains, so the driver refills while the device empties the ring, and yields after 64 to the event loop', async () => {
  const q = new ScriptQueue(Array.from({ length: 150 }, (_, i) => chain(i)));
  const { ctx } = context(q);
  const served: number[] = [];
  new QueueServer(ctx, 0, (req) => void served.push(req.chain.id)).kick();
  assert.equal(served.length, 64, 'one turn serves a ring\'s size, here the publish batch');
  assert.equal(q.calls.indexOf('publish'), q.calls.indexOf('push 63') + 1, 'published right after the 64th');
  assert.equal(q.notificationsOn, false, 'the rest is served without waiting for a kick');
  await turnsUntil(() => q.notificationsOn);
  assert.deepEqual(served, Array.from({ length: 150 }, (_, i) => i));
  assert.deepEqual(q.calls.filter((c) => c === 'publish').length, 3, 'after 64, 128 and the end');
});

test('asynchronous completions: many in flight, finished out of order, each pushed once, one publish per tick', async () => {
  const q = new ScriptQueue([chain(0), chain(1), chain(2)]);
  const { ctx, notified } = context(q);
  const gates = [deferred(), deferred(), deferred()];
  const server = new QueueServer(ctx, 0, (req) => gates[req.chain.id].promise);
  server.kick();
  assert.equal(server.inFlight, 3);
  assert.equal(q.used.length, 0);
  gates[2].resolve();
  gates[0].resolve();
  await gates[0].promise;
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(q.used.map(([id]) => id), [2, 0]);
  assert.equal(q.calls.filter((c) => c === 'publish').length, 1, 'two completions in one tick, one publish');
  gates[1].resolve();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(q.used.map(([id]) => id), [2, 0, 1]);
  assert.equal(server.inFlight, 0);
  assert.deepEqual(notified, [0, 0]);
});

test('with IN_ORDER, buffers finished out of order still go back in the order they were popped', async () => {
  const q = new ScriptQueue([chain(0), chain(1), chain(2)]);
  const { ctx } = context(q, featureBit(Feature.IN_ORDER));
  const gates = [deferred(), deferred(), deferred()];
  new QueueServer(ctx, 0, (req) => gates[req.chain.id].promise).kick();
  gates[2].resolve();
  gates[1].resolve();
  await new Promise((r) => setImmediate(r));
  assert.equal(q.used.length, 0, 'buffer 0 holds the others back');
  gates[0].resolve();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(q.used.map(([id]) => id), [0, 1, 2]);
});

test('with IN_ORDER, synchronous requests behind a held one wait for it, and each request still goes back once', async () => {
  const q = new ScriptQueue([chain(0), chain(1), chain(2), chain(3)]);
  const { ctx } = context(q, featureBit(Feature.IN_ORDER));
  const gate = deferred();
  const server = new QueueServer(ctx, 0, (req) => {
    return req.chain.id === 1 ? gate.promise : undefined;
  });
  server.kick();
  assert.deepEqual(q.used.map(([id]) => id), [0], 'the first went back at once; 2 and 3 wait for 1');
  gate.resolve();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(q.used.map(([id]) => id), [0, 1, 2, 3]);
  assert.equal(server.inFlight, 0);
});

test('a handler that resets the device stops the drain: its chain is not pushed, nothing more is popped or published', () => {
  const q = new ScriptQueue([chain(0), chain(1), chain(2)]);
  const { ctx, ctl } = context(q);
  const served: number[] = [];
  new QueueServer(ctx, 0, (req) => {
    served.push(req.chain.id);
    if (req.chain.id === 1) ctl.live = false;
  }).kick();
  assert.deepEqual(served, [0, 1]);
  assert.deepEqual(q.calls, ['disable', 'pop', 'push 0', 'pop']);
});

test('a completion after a reset writes neither the buffer nor the ring', async () => {
  const buffer = new Uint8Array(4);
  const q = new ScriptQueue([new DescriptorChain(0, 1, [], [buffer], 0, 4)]);
  const { ctx, ctl } = context(q);
  const gate = deferred();
  new QueueServer(ctx, 0, async (req: Request) => {
    await gate.promise;
    req.writer.write(new Uint8Array([9, 9, 9, 9]));
  }).kick();
  ctl.live = false;
  gate.resolve();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual([...buffer], [0, 0, 0, 0]);
  assert.deepEqual(q.used, []);
});

test('a ring fault while popping fails the queue and ends the loop', () => {
  const q = new ScriptQueue([chain(0)]);
  const fault = new VirtqueueError('chain too long', 'loop');
  q.pop = () => {
    throw fault;
  };
  const { ctx, failed } = context(q);
  new QueueServer(ctx, 0, () => {}).kick();
  assert.deepEqual(failed, [fault]);
});

test('a handler that throws is logged and its chain still goes back to the driver', () => {
  const q = new ScriptQueue([chain(0)]);
  const { ctx, lines } = context(q);
  new QueueServer(ctx, 0, () => {
    throw new Error('boom');
  }).kick();
  assert.deepEqual(q.used, [[0, 0]]);
  assert.equal(lines.length, 1);
  assert.match(lines[0].msg, /request handler failed/);
});

test('a request finished twice goes back to the driver once, and the second finish is logged as a handler failure', () => {
  const q = new ScriptQueue([chain(0), chain(1)]);
  const { ctx, lines } = context(q);
  const server = new QueueServer(ctx, 0, (req) => {
    req.finish();
    if (req.chain.id === 0) req.finish();
    return LATER;
  });
  server.kick();
  assert.deepEqual(q.used.map(([id]) => id), [0, 1]);
  assert.equal(server.inFlight, 0);
  assert.equal(lines.filter((l) => /request handler failed/.test(l.msg)).length, 1);
});

test('a handler that finishes its request and then throws returns it once', () => {
  const q = new ScriptQueue([chain(0)]);
  const { ctx } = context(q);
  const server = new QueueServer(ctx, 0, (req) => {
    req.finish();
    throw new Error('after finishing');
  });
  server.kick();
  assert.deepEqual(q.used, [[0, 0]]);
  assert.equal(server.inFlight, 0);
});

test('the queue counts requests, bytes, handler failures and notifications sent or suppressed', () => {
  const q = new ScriptQueue([chain(0, 8), chain(1, 8), chain(2, 8)]);
  const { ctx } = context(q);
  const server = new QueueServer(ctx, 0, (req) => {
    if (req.chain.id === 2) throw new Error('boom');
    req.writer.write(new Uint8Array(3));
  });
  server.kick();
  q.driverWantsNotify = false;
  q.available.push(chain(3, 8));
  server.kick();
  assert.deepEqual(ctx.counters.snapshot().queues[0], {
    requests: 4,
    readBytes: 0,
    writtenBytes: 9,
    errors: 1,
    ringFaults: 0,
    notifications: 1,
    suppressed: 1,
  });
});

test('over a real ring: a request completing after the device was reset leaves guest memory alone', async () => {
  let pending: { req: Request; gate: ReturnType<typeof deferred> } | undefined;
  const device = new ScriptedDevice((req) => {
    pending = { req, gate: deferred() };
    return pending.gate.promise;
  }, 1);
  const { transport, host, memory } = createLoopback(device, { memoryBytes: 1 << 16 });
  const driver = await VirtioDriver.start(transport, { name: 'test', deviceId: device.deviceId, features: FRAMEWORK_FEATURES, queues: allQueues });
  const buf = transport.dma.alloc(8, 8)!;
  memory.slice(buf, 8).fill(0x55);
  void driver.queue(0).submit([], [{ addr: buf, len: 8 }]);
  await new Promise((r) => setImmediate(r));
  assert.ok(pending, 'the device has the request');
  const usedArea = host.state.queueArea(0, 'device');
  const before = memory.slice(usedArea, 64).slice();

  await transport.reset();
  pending.req.writer.write(new Uint8Array(8).fill(0xaa));
  pending.gate.resolve();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual([...memory.slice(buf, 8)], new Array(8).fill(0x55), 'the buffer is untouched');
  assert.deepEqual(memory.slice(usedArea, 64), before, 'the used ring is untouched');
});

test('counters start at zero, plain zeros in a snapshot, and count past 2^31 exactly', () => {
  const counters = new DeviceCounters(1);
  assert.ok(Object.is(counters.queue(0).readBytes, 0));
  counters.queue(0).readBytes += 2 ** 31 + 76;
  assert.equal(counters.snapshot().queues[0].readBytes, 2 ** 31 + 76);
  assert.deepEqual(new DeviceCounters(1).snapshot().queues[0], { requests: 0, readBytes: 0, writtenBytes: 0, errors: 0, ringFaults: 0, notifications: 0, suppressed: 0 });
});

const { NEXT, WRITE } = DescFlag;

/** A split ring of 8 with, in ring order, one-descriptor readable chains and (at `general`) a chain of two descriptors. */
function spanRing(heads: number, general: readonly number[] = []): { ring: RawRing; queue: SplitDeviceQueue } {
  const ring = new RawRing(8);
  const order: number[] = [];
  for (let h = 0; h < heads; h++) {
    if (general.includes(h)) {
      ring.writeDesc(h, DATA + 0x100 * h, 4, NEXT, 7);
      ring.writeDesc(7, DATA + 0x700, 2, WRITE);
    } else ring.writeDesc(h, DATA + 0x100 * h, 10 + h, 0);
    order.push(h);
  }
  ring.makeAvailable(order);
  return { ring, queue: new SplitDeviceQueue(ring.memory, ring.config, 'vq0') };
}

test('a span handler gets one-descriptor readable chains where they lie; every other chain goes to the request handler, in ring order', () => {
  const { ring, queue } = spanRing(5, [2]);
  ring.memory.slice(DATA + 0x300, 1)[0] = 0x33;
  const { ctx, notified } = context(queue);
  const served: string[] = [];
  new QueueServer(
    ctx,
    0,
    (req) => {
      served.push(`request ${req.chain.id}`);
      req.writer.write(new Uint8Array([1]));
    },
    (bytes, offset, length) => served.push(`span ${(offset - DATA) >> 8} ${length} ${bytes[offset]}`),
  ).kick();
  assert.deepEqual(served, ['span 0 10 0', 'span 1 11 0', 'request 2', 'span 3 13 51', 'span 4 14 0']);
  assert.equal(ring.usedIdx, 5, 'all published');
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => ring.usedElem(i)), [
    { id: 0, len: 0 },
    { id: 1, len: 0 },
    { id: 2, len: 1 },
    { id: 3, len: 0 },
    { id: 4, len: 0 },
  ]);
  assert.deepEqual(notified, [0]);
  assert.deepEqual(ctx.counters.snapshot().queues[0], {
    requests: 5,
    readBytes: 10 + 11 + 4 + 13 + 14,
    writtenBytes: 1,
    errors: 0,
    ringFaults: 0,
    notifications: 1,
    suppressed: 0,
  });
});

test('a span handler that throws is logged and counted, and its chain still goes back', () => {
  const { ring, queue } = spanRing(2);
  const { ctx, lines } = context(queue);
  new QueueServer(ctx, 0, () => {}, (_b, offset) => {
    if (offset === DATA) throw new Error('boom');
  }).kick();
  assert.equal(ring.usedIdx, 2);
  assert.equal(ctx.counters.snapshot().queues[0].errors, 1);
  assert.equal(lines.filter((l) => l.msg.includes('request handler failed')).length, 1);
});

test('a span handler that resets the device stops the drain: its chain is not pushed, nothing more is served or published', () => {
  const { ring, queue } = spanRing(3);
  const { ctx, ctl, notified } = context(queue);
  const served: number[] = [];
  new QueueServer(ctx, 0, () => assert.fail('no chain for the request handler'), (_b, offset) => {
    served.push(offset);
    if (served.length === 2) ctl.live = false;
  }).kick();
  assert.equal(served.length, 2);
  assert.equal(ring.usedIdx, 0, 'nothing published after the reset');
  assert.deepEqual(notified, []);
  assert.equal(ctx.counters.snapshot().queues[0].requests, 1);
});
