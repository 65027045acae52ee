/** The driver side of the split ring, against the device side and against a used ring written by hand. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DescFlag } from '../../../src/virtio/constants.ts';
import { VirtqueueError, type Segment } from '../../../src/virtio/queue.ts';
import {
  SplitDeviceQueue,
  SplitDriverQueue,
  indirectTablesBytes,
  type SplitDriverOptions,
} from '../../../src/virtio/split-ring.ts';
import { DATA, RawRing, concat, type Features } from './split-ring-fixture.ts';

const TABLES = 0x20000;

function driver(
  size = 8,
  features: Features = {},
  options: SplitDriverOptions = {},
): { ring: RawRing; drv: SplitDriverQueue<string> } {
  const ring = new RawRing(size, features);
  return { ring, drv: new SplitDriverQueue<string>(ring.memory, ring.config, 'vq0', options) };
}

/** Descriptor `i` of the ring's table, as the device would read it. */
function descAt(ring: RawRing, i: number, table = ring.config.desc) {
  const at = table + 16 * i;
  return {
    addr: Number(ring.memory.readU64(at)),
    len: ring.memory.readU32(at + 8),
    flags: ring.memory.readU16(at + 12),
    next: ring.memory.readU16(at + 14),
  };
}

function assertUsedViolation(drv: SplitDriverQueue<string>, rule: string): void {
  assert.throws(
    () => drv.getUsed(),
    (e: unknown) => e instanceof VirtqueueError && e.rule === rule,
    `expected VirtqueueError "${rule}"`,
  );
}

test('a request goes driver → device → driver with its data and token', () => {
  const { ring, drv } = driver();
  const dev = new SplitDeviceQueue(ring.memory, ring.config, 'vq0');
  const request = ring.fill(DATA, 12, 9);
  const out: Segment[] = [
    { addr: DATA, len: 4 },
    { addr: DATA + 4, len: 8 },
  ];
  const inSegs: Segment[] = [{ addr: DATA + 0x100, len: 16 }];
  assert.equal(drv.add(out, inSegs, 'req'), true);
  assert.equal(drv.freeDescriptors, 5);
  assert.equal(dev.pop(), null, 'not visible before kick');
  assert.equal(drv.kick(), true);
  const chain = dev.pop();
  assert.ok(chain);
  assert.deepEqual(concat(chain.readable), request);
  assert.equal(chain.writableLength, 16);
  chain.writable[0].set([1, 2, 3]);
  dev.push(chain, 3);
  assert.equal(drv.getUsed(), null, 'not visible before publish');
  assert.equal(dev.publish(), true);
  assert.deepEqual(drv.getUsed(), { token: 'req', len: 3 });
  assert.deepEqual([...ring.memory.slice(DATA + 0x100, 3)], [1, 2, 3]);
  assert.equal(drv.getUsed(), null);
  assert.equal(drv.freeDescriptors, 8);
});

test('add refuses nothing-to-send, oversized buffers and bad segments, and reports a full ring', () => {
  const { drv } = driver(4);
  assert.throws(() => drv.add([], [], 'x'), RangeError);
  const five = Array.from({ length: 5 }, (_, i) => ({ addr: DATA + i, len: 1 }));
  assert.throws(() => drv.add(five, [], 'x'), RangeError, 'longer than the ring');
  assert.throws(() => drv.add([{ addr: -1, len: 1 }], [], 'x'), RangeError);
  assert.throws(() => drv.add([{ addr: DATA, len: 2 ** 32 }], [], 'x'), RangeError);
  assert.equal(drv.freeDescriptors, 4, 'refused buffers take nothing');
  assert.equal(drv.add(five.slice(0, 3), [], 'a'), true);
  assert.equal(drv.add(five.slice(0, 2), [], 'b'), false, 'one descriptor left');
  assert.equal(drv.add(five.slice(0, 1), [], 'c'), true);
  assert.equal(drv.freeDescriptors, 0);
});

test('segments become descriptors: 64-bit addresses, WRITE on the in part, NEXT linking', () => {
  const { ring, drv } = driver(4);
  drv.add([{ addr: 2 ** 40 + 0x1234, len: 7 }], [{ addr: DATA, len: 9 }], 'x');
  assert.deepEqual(descAt(ring, 0), { addr: 2 ** 40 + 0x1234, len: 7, flags: DescFlag.NEXT, next: 1 });
  assert.deepEqual(descAt(ring, 1), { addr: DATA, len: 9, flags: DescFlag.WRITE, next: 0 });
});

test('with INDIRECT_DESC a multi-segment buffer takes one ring descriptor and its own table', () => {
  const options = { indirectTables: { addr: TABLES, maxSegments: 4 } };
  assert.equal(indirectTablesBytes(8, 4), 512);
  const { ring, drv } = driver(8, { indirect: true }, options);
  const dev = new SplitDeviceQueue(ring.memory, ring.config, 'vq0');
  drv.add([{ addr: DATA, len: 1 }], [{ addr: DATA + 1, len: 2 }], 'two');
  drv.add([{ addr: DATA, len: 3 }], [], 'one');
  drv.add(Array.from({ length: 5 }, (_, i) => ({ addr: DATA + i, len: 1 })), [], 'five');
  assert.equal(drv.freeDescriptors, 8 - 1 - 1 - 5, 'five segments exceed the tables and go direct');
  assert.deepEqual(descAt(ring, 0), { addr: TABLES, len: 32, flags: DescFlag.INDIRECT, next: 0 });
  assert.deepEqual(descAt(ring, 1, TABLES), { addr: DATA + 1, len: 2, flags: DescFlag.WRITE, next: 0 });
  drv.kick();
  const chains = [dev.pop(), dev.pop(), dev.pop()];
  assert.deepEqual(
    chains.map((c) => [c?.readableLength, c?.writableLength, c?.ringDescriptors]),
    [
      [1, 2, 1],
      [3, 0, 1],
      [5, 0, 5],
    ],
  );
  for (const c of chains) dev.push(c!, c!.writableLength);
  dev.publish();
  assert.deepEqual([drv.getUsed()?.token, drv.getUsed()?.token, drv.getUsed()?.token], ['two', 'one', 'five']);
  assert.equal(drv.freeDescriptors, 8);
});

test('indirect table options are checked', () => {
  const ring = new RawRing(8, { indirect: true });
  const make = (addr: number, maxSegments: number) =>
    new SplitDriverQueue(ring.memory, ring.config, 'vq0', { indirectTables: { addr, maxSegments } });
  assert.throws(() => make(TABLES + 8, 4), RangeError);
  assert.throws(() => make(TABLES, 1), RangeError);
  assert.throws(() => make(TABLES, 65536), RangeError);
  assert.throws(() => make(0x7ff00, 8), RangeError, 'outside guest memory');
});

test('kick without EVENT_IDX follows VIRTQ_USED_F_NO_NOTIFY', () => {
  const { ring, drv } = driver();
  assert.equal(drv.kick(), false, 'nothing added');
  drv.add([{ addr: DATA, len: 1 }], [], 'a');
  ring.usedFlags = 1;
  assert.equal(drv.kick(), false);
  drv.add([{ addr: DATA, len: 1 }], [], 'b');
  ring.usedFlags = 0;
  assert.equal(drv.kick(), true);
  assert.equal(ring.availIdx, 2);
});

test('kick with EVENT_IDX follows avail_event, across the 16-bit wrap', () => {
  const { ring, drv } = driver(4, { eventIdx: true });
  const dev = new SplitDeviceQueue(ring.memory, ring.config, 'vq0');
  ring.usedFlags = 1; // ignored with EVENT_IDX (§2.7.10.1)
  // Walk the indices up to the wrap with one buffer at a time.
  for (let i = 0; i < 65534; i++) {
    drv.add([{ addr: DATA, len: 1 }], [], 'x');
    drv.kick();
    dev.push(dev.pop()!, 0);
    dev.publish();
    drv.getUsed();
  }
  assert.equal(ring.availIdx, 65534);
  ring.availEvent = 65535;
  drv.add([{ addr: DATA, len: 1 }], [], 'a');
  assert.equal(drv.kick(), false, 'filled entry 65534');
  drv.add([{ addr: DATA, len: 1 }], [], 'b');
  drv.add([{ addr: DATA, len: 1 }], [], 'c');
  assert.equal(drv.kick(), true, 'filled 65535 and 0');
  assert.equal(ring.availIdx, 1);
});

test('used elements naming descriptors out of range or not in flight are refused without harm', () => {
  const { ring, drv } = driver(4);
  drv.add([{ addr: DATA, len: 1 }, { addr: DATA, len: 1 }], [], 'a');
  drv.kick();
  ring.writeUsedElem(0, 4, 0);
  ring.usedIdx = 1;
  assertUsedViolation(drv, 'used id not in flight');
  ring.writeUsedElem(0, 1, 0); // the second descriptor of a chain, not a head
  assertUsedViolation(drv, 'used id not in flight');
  ring.writeUsedElem(0, 0, 77);
  assert.deepEqual(drv.getUsed(), { token: 'a', len: 77 }, 'len is passed on as claimed');
  assert.equal(drv.freeDescriptors, 4);
  ring.writeUsedElem(1, 0, 0);
  ring.usedIdx = 2;
  assertUsedViolation(drv, 'used index jump');
});

test('a used index running ahead of the buffers made available is refused', () => {
  const { ring, drv } = driver(8);
  drv.add([{ addr: DATA, len: 1 }], [], 'a');
  drv.add([{ addr: DATA, len: 1 }], [], 'b');
  ring.writeUsedElem(0, 0, 0);
  ring.usedIdx = 1;
  assertUsedViolation(drv, 'used index jump'); // added but not yet kicked
  drv.kick();
  ring.usedIdx = 3;
  assertUsedViolation(drv, 'used index jump');
  ring.usedIdx = 1;
  assert.equal(drv.getUsed()?.token, 'a');
});

test('IN_ORDER: descriptors are used in ring order and batched used elements are accepted (§2.7.9)', () => {
  const { ring, drv } = driver(4, { inOrder: true });
  const seg = (n: number) => ({ addr: DATA, len: n });
  drv.add([seg(1)], [seg(10), seg(11)], 'a'); // descriptors 0, 1, 2
  drv.add([seg(1)], [], 'b'); // 3
  drv.kick();
  ring.writeUsedElem(0, 3, 0); // one element for both, naming the last
  ring.usedIdx = 2;
  assert.deepEqual(drv.getUsed(), { token: 'a', len: 21 }, 'a skipped buffer was written completely');
  assert.deepEqual(drv.getUsed(), { token: 'b', len: 0 });
  assert.equal(drv.getUsed(), null);
  drv.add([seg(1)], [seg(5)], 'c'); // descriptors 0 and 1 again, in ring order
  drv.add([seg(1), seg(2)], [], 'd'); // 2 and 3
  assert.equal(drv.add([seg(1)], [], 'e'), false, 'the ring is full');
  assert.deepEqual(descAt(ring, 0).next, 1);
  assert.deepEqual(descAt(ring, 2), { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 3 });
  drv.kick();
  ring.writeUsedElem(2, 2, 0); // names d's head, but c comes first: c is batched with it
  ring.writeUsedElem(3, 3, 0);
  ring.usedIdx = 4;
  assert.deepEqual(drv.getUsed(), { token: 'c', len: 5 });
  assert.deepEqual(drv.getUsed(), { token: 'd', len: 0 });
  assert.equal(drv.add([seg(3)], [], 'e'), true);
  assert.equal(descAt(ring, 0).len, 3, 'c returned first, so its descriptor 0 is next in ring order');
  drv.kick();
  ring.writeUsedElem(4, 1, 0); // descriptor 1 is not the head of any buffer in flight
  ring.usedIdx = 5;
  assertUsedViolation(drv, 'used id out of order');
});

test('a buffer going out again on its descriptor and ring entry finds them as the device must read them, even after the device scribbled there', () => {
  const { ring, drv } = driver(2, { inOrder: true });
  const availEntry = (i: number): number => ring.memory.readU16(ring.config.driver + 4 + 2 * i);
  const sendAndReturn = (token: string, len: number, usedAt: number, head: number): void => {
    assert.equal(drv.add([{ addr: DATA + 0x40 * head, len }], [], token), true);
    drv.kick();
    ring.writeUsedElem(usedAt, head, 0);
    ring.usedIdx = usedAt + 1;
    assert.deepEqual(drv.getUsed(), { token, len: 0 });
  };
  sendAndReturn('a', 60, 0, 0);
  sendAndReturn('b', 60, 1, 1);
  // Round again: descriptor 0 and ring entry 0 hold what the next buffer needs, but for the
  // bytes a hostile device wrote over them.
  ring.writeDesc(0, DATA + 0x40, 60, DescFlag.WRITE, 1);
  ring.memory.writeU16(ring.config.driver + 4, 1);
  sendAndReturn('c', 60, 2, 0);
  assert.deepEqual(descAt(ring, 0), { addr: DATA, len: 60, flags: 0, next: 0 });
  assert.equal(availEntry(0), 0);
  // Same descriptor, another length: only that word differs, and it is written.
  sendAndReturn('d', 61, 3, 1);
  assert.equal(drv.add([{ addr: DATA, len: 42 }], [], 'e'), true);
  assert.deepEqual(descAt(ring, 0), { addr: DATA, len: 42, flags: 0, next: 0 });
});

test('interrupt suppression: flags without EVENT_IDX, used_event with it', () => {
  {
    const { ring, drv } = driver();
    drv.disableInterrupts();
    assert.equal(ring.availFlags, 1);
    assert.equal(drv.enableInterrupts(), false);
    assert.equal(ring.availFlags, 0);
  }
  {
    const { ring, drv } = driver(8, { eventIdx: true });
    const dev = new SplitDeviceQueue(ring.memory, ring.config, 'vq0');
    drv.add([{ addr: DATA, len: 1 }], [], 'a');
    drv.add([{ addr: DATA, len: 1 }], [], 'b');
    drv.kick();
    dev.push(dev.pop()!, 0);
    dev.publish();
    drv.disableInterrupts();
    assert.equal(ring.availFlags, 0, 'flags stay 0 with EVENT_IDX');
    assert.equal(drv.enableInterrupts(), true, 'a used buffer is waiting');
    assert.equal(drv.getUsed()?.token, 'a');
    assert.equal(drv.enableInterrupts(), false);
    assert.equal(ring.usedEvent, 1);
    dev.push(dev.pop()!, 0);
    assert.equal(dev.publish(), true);
  }
});
