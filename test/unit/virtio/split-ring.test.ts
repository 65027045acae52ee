/** The device side of the split ring against descriptor tables and rings written by hand. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DescFlag } from '../../../src/virtio/constants.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { VirtqueueError, type QueueConfig } from '../../../src/virtio/queue.ts';
import { SplitDeviceQueue, needEvent, placeSplitRing, splitRingLayout } from '../../../src/virtio/split-ring.ts';
import { DATA, RawRing, RING, concat, type Features } from './split-ring-fixture.ts';

const { NEXT, WRITE, INDIRECT } = DescFlag;

function device(size = 8, features: Features = {}, base = 0): { ring: RawRing; dev: SplitDeviceQueue } {
  const ring = new RawRing(size, features);
  return { ring, dev: new SplitDeviceQueue(ring.memory, ring.config, 'vq0', base) };
}

/** pop() must throw a VirtqueueError naming `rule`. */
function assertViolation(dev: SplitDeviceQueue, rule: string): void {
  assert.throws(
    () => dev.pop(),
    (e: unknown) => e instanceof VirtqueueError && e.rule === rule,
    `expected VirtqueueError "${rule}"`,
  );
}

test('layout: sizes and alignments of §2.7, placed one after another', () => {
  assert.deepEqual(splitRingLayout(256), {
    desc: { size: 4096, align: 16 },
    driver: { size: 518, align: 2 },
    device: { size: 2054, align: 4 },
  });
  const at = placeSplitRing(0x1001, 4);
  assert.deepEqual(at, { desc: 0x1010, driver: 0x1050, device: 0x1060, end: 0x1060 + 38 });
});

test('construction refuses bad sizes, misaligned areas and areas outside one region', () => {
  const ring = new RawRing(8);
  const make = (patch: Partial<QueueConfig>, memory: GuestMemory = ring.memory) =>
    new SplitDeviceQueue(memory, { ...ring.config, ...patch }, 'vq0');
  const rule = (name: string) => (e: unknown) => e instanceof VirtqueueError && e.rule === name;
  for (const size of [0, 3, 12, 65536, 1.5]) assert.throws(() => make({ size }), rule('bad queue size'));
  assert.throws(() => make({ desc: RING + 8 }), rule('misaligned ring area'));
  assert.throws(() => make({ driver: ring.config.driver + 1 }), rule('misaligned ring area'));
  assert.throws(() => make({ device: ring.config.device + 2 }), rule('misaligned ring area'));
  assert.throws(() => make({ device: 0x7fff0 }), rule('ring area outside guest memory'));
  const split = new GuestMemory([
    { guestAddr: 0, bytes: new Uint8Array(0x1040) },
    { guestAddr: 0x1040, bytes: new Uint8Array(0x1000) },
  ]);
  assert.throws(() => make({}, split), rule('ring area outside guest memory'), 'a table straddling two regions');
  assert.throws(() => new SplitDeviceQueue(ring.memory, ring.config, 'vq0', 0x10000), RangeError);
  assert.throws(() => new SplitDeviceQueue(ring.memory, ring.config, 'vq0', -1), RangeError);
});

test('an empty ring pops nothing', () => {
  const { dev } = device();
  assert.equal(dev.pop(), null);
  assert.equal(dev.inFlight, 0);
});

test('a chain of readable and writable descriptors gives zero-copy views in order', () => {
  const { ring, dev } = device();
  const a = ring.fill(DATA, 10, 1);
  const b = ring.fill(DATA + 0x100, 5, 2);
  ring.writeDesc(3, DATA, 10, NEXT, 6);
  ring.writeDesc(6, DATA + 0x100, 5, NEXT, 1);
  ring.writeDesc(1, DATA + 0x200, 7, WRITE | NEXT, 0);
  ring.writeDesc(0, DATA + 0x300, 9, WRITE);
  ring.makeAvailable([3]);
  const chain = dev.pop();
  assert.ok(chain);
  assert.equal(chain.id, 3);
  assert.equal(chain.ringDescriptors, 4);
  assert.deepEqual(concat(chain.readable), concat([a, b]));
  assert.equal(chain.readableLength, 15);
  assert.deepEqual(chain.writable.map((w) => w.length), [7, 9]);
  assert.equal(chain.writableLength, 16);
  chain.writable[1][0] = 0xab;
  assert.equal(ring.memory.slice(DATA + 0x300, 1)[0], 0xab, 'writable views alias guest memory');
  assert.equal(dev.inFlight, 1);
  assert.equal(dev.base, 1);
  assert.equal(dev.pop(), null);
});

test('pop rejects heads and next indices outside the table, loops, and avail index jumps', () => {
  {
    const { ring, dev } = device();
    ring.makeAvailable([8]);
    assertViolation(dev, 'head out of range');
  }
  {
    const { ring, dev } = device();
    ring.writeDesc(0, DATA, 4, NEXT, 8);
    ring.makeAvailable([0]);
    assertViolation(dev, 'next out of range');
  }
  {
    const { ring, dev } = device();
    ring.writeDesc(0, DATA, 4, NEXT, 1);
    ring.writeDesc(1, DATA, 4, NEXT, 0);
    ring.makeAvailable([0]);
    assertViolation(dev, 'chain too long');
  }
  {
    const { ring, dev } = device();
    ring.availIdx = 9;
    assertViolation(dev, 'avail index jump');
  }
  {
    // A full ring is no jump: exactly `size` entries may be available at once.
    const { ring, dev } = device(4);
    for (let i = 0; i < 4; i++) ring.writeDesc(i, DATA, 1, 0);
    ring.makeAvailable([3, 2, 1, 0]);
    assert.deepEqual([dev.pop()?.id, dev.pop()?.id, dev.pop()?.id, dev.pop()?.id, dev.pop()], [3, 2, 1, 0, null]);
  }
  {
    // Wrapping 16-bit arithmetic: from 65534 to 2 is 4 entries, not a jump.
    const { ring, dev } = device(8, {}, 65534);
    for (let i = 0; i < 4; i++) ring.writeDesc(i, DATA, 1, 0);
    ring.makeAvailable([0, 1, 2, 3], 65534);
    assert.equal(ring.availIdx, 2);
    for (let i = 0; i < 4; i++) assert.equal(dev.pop()?.id, i);
    assert.equal(dev.base, 2);
  }
});

test('pop rejects a head made available while its chain is still in flight', () => {
  const { ring, dev } = device();
  ring.writeDesc(2, DATA, 4, 0);
  ring.makeAvailable([2, 2]);
  assert.ok(dev.pop());
  assertViolation(dev, 'head already in flight');
});

test('pop rejects buffers outside guest memory and readable after writable', () => {
  {
    const { ring, dev } = device();
    ring.writeDesc(0, 0x7fffe, 4, 0);
    ring.makeAvailable([0]);
    assertViolation(dev, 'buffer outside guest memory');
  }
  {
    const { ring, dev } = device();
    ring.writeDesc(0, 2 ** 60, 4, 0);
    ring.makeAvailable([0]);
    assertViolation(dev, 'buffer outside guest memory');
  }
  {
    const { ring, dev } = device();
    ring.writeDesc(0, DATA, 4, WRITE | NEXT, 1);
    ring.writeDesc(1, DATA, 4, 0);
    ring.makeAvailable([0]);
    assertViolation(dev, 'readable after writable');
  }
});

test('indirect tables: the chain continues in the table, whose WRITE flag is ignored', () => {
  const { ring, dev } = device(8, { indirect: true });
  const table = DATA + 0x1003; // §2.7.5.3 places no alignment requirement on the table
  const head = ring.fill(DATA, 6, 3);
  const body = ring.fill(DATA + 0x100, 20, 4);
  ring.writeDesc(0, DATA, 6, NEXT, 5);
  ring.writeDesc(5, table, 48, INDIRECT | WRITE);
  ring.writeDesc(0, DATA + 0x100, 20, NEXT, 2, table);
  ring.writeDesc(2, DATA + 0x200, 30, WRITE | NEXT, 1, table);
  ring.writeDesc(1, DATA + 0x300, 40, WRITE, 0, table);
  ring.makeAvailable([0]);
  const chain = dev.pop();
  assert.ok(chain);
  assert.equal(chain.id, 0);
  assert.equal(chain.ringDescriptors, 2, 'one direct descriptor and the indirect one');
  assert.deepEqual(concat(chain.readable), concat([head, body]));
  assert.deepEqual(chain.writable.map((w) => w.length), [30, 40]);
});

test('an indirect table may be longer than a small ring, up to 1024 entries (what Linux virtio_blk builds)', () => {
  const { ring, dev } = device(8, { indirect: true });
  const table = DATA + 0x1000;
  const entries = 1024;
  ring.writeDesc(0, table, 16 * entries, INDIRECT);
  for (let i = 0; i < entries; i++) {
    const last = i === entries - 1;
    ring.writeDesc(i, DATA + i, 1, (i > 0 ? WRITE : 0) | (last ? 0 : NEXT), last ? 0 : i + 1, table);
  }
  ring.makeAvailable([0]);
  const chain = dev.pop();
  assert.ok(chain);
  assert.equal(chain.readable.length + chain.writable.length, entries);
  assert.equal(chain.ringDescriptors, 1);
});

test('indirect rules of §2.7.5.3 are enforced', () => {
  const cases: [Features, (ring: RawRing) => void, string][] = [
    [{}, (r) => r.writeDesc(0, DATA, 16, INDIRECT), 'indirect not negotiated'],
    [{ indirect: true }, (r) => r.writeDesc(0, DATA, 16, INDIRECT | NEXT, 1), 'indirect with next'],
    [{ indirect: true }, (r) => r.writeDesc(0, DATA, 24, INDIRECT), 'bad indirect table length'],
    [{ indirect: true }, (r) => r.writeDesc(0, DATA, 0, INDIRECT), 'bad indirect table length'],
    [{ indirect: true }, (r) => r.writeDesc(0, DATA, 16 * 1025, INDIRECT), 'indirect table too long'],
    [{ indirect: true }, (r) => r.writeDesc(0, 0x7fff0, 32, INDIRECT), 'indirect table outside guest memory'],
    [
      { indirect: true },
      (r) => {
        r.writeDesc(0, DATA, 32, INDIRECT);
        r.writeDesc(0, DATA + 0x100, 16, INDIRECT, 0, DATA);
      },
      'nested indirect',
    ],
    [
      { indirect: true },
      (r) => {
        r.writeDesc(0, DATA, 32, INDIRECT);
        r.writeDesc(0, DATA + 0x100, 4, NEXT, 2, DATA);
      },
      'next out of range',
    ],
    [
      { indirect: true },
      (r) => {
        r.writeDesc(0, DATA, 32, INDIRECT);
        r.writeDesc(0, DATA + 0x100, 4, NEXT, 1, DATA);
        r.writeDesc(1, DATA + 0x100, 4, NEXT, 0, DATA);
      },
      'chain too long',
    ],
    [
      { indirect: true },
      (r) => {
        r.writeDesc(0, DATA, 32, INDIRECT);
        r.writeDesc(0, DATA + 0x100, 4, WRITE | NEXT, 1, DATA);
        r.writeDesc(1, DATA + 0x100, 4, 0, 0, DATA);
      },
      'readable after writable',
    ],
  ];
  for (const [features, setup, rule] of cases) {
    const { ring, dev } = device(8, features);
    setup(ring);
    ring.makeAvailable([0]);
    assertViolation(dev, rule);
  }
});

test('push writes the used element; publish makes it visible once per batch', () => {
  const { ring, dev } = device();
  ring.writeDesc(4, DATA, 8, WRITE);
  ring.writeDesc(5, DATA, 8, WRITE);
  ring.makeAvailable([4, 5]);
  const a = dev.pop();
  const b = dev.pop();
  assert.ok(a && b);
  dev.push(b, 3);
  dev.push(a, 8);
  assert.equal(dev.inFlight, 0);
  assert.equal(ring.usedIdx, 0, 'nothing visible before publish');
  assert.equal(dev.publish(), true);
  assert.equal(ring.usedIdx, 2);
  assert.deepEqual([ring.usedElem(0), ring.usedElem(1)], [
    { id: 5, len: 3 },
    { id: 4, len: 8 },
  ]);
  assert.equal(dev.publish(), false, 'nothing new to publish');
});

test('push refuses more bytes than the writable part, and chains not in flight', () => {
  const { ring, dev } = device();
  ring.writeDesc(0, DATA, 8, NEXT, 1);
  ring.writeDesc(1, DATA, 4, WRITE);
  ring.makeAvailable([0]);
  const chain = dev.pop();
  assert.ok(chain);
  assert.throws(() => dev.push(chain, 5), RangeError);
  assert.throws(() => dev.push(chain, -1), RangeError);
  dev.push(chain, 4);
  assert.throws(() => dev.push(chain, 4), RangeError, 'pushed twice');
});

test('used buffer notifications without EVENT_IDX follow VIRTQ_AVAIL_F_NO_INTERRUPT', () => {
  const { ring, dev } = device();
  ring.writeDesc(0, DATA, 8, WRITE);
  ring.writeDesc(1, DATA, 8, WRITE);
  ring.makeAvailable([0, 1]);
  const a = dev.pop();
  const b = dev.pop();
  assert.ok(a && b);
  ring.availFlags = 1;
  dev.push(a, 0);
  assert.equal(dev.publish(), false);
  ring.availFlags = 0;
  dev.push(b, 0);
  assert.equal(dev.publish(), true);
});

test('used buffer notifications with EVENT_IDX follow used_event, across the 16-bit wrap', () => {
  const ring = new RawRing(4, { eventIdx: true });
  ring.usedIdx = 65534; // a resumed device continues from the used index in memory
  const fresh = new SplitDeviceQueue(ring.memory, ring.config, 'vq0');
  for (let i = 0; i < 4; i++) ring.writeDesc(i, DATA, 8, WRITE);
  ring.makeAvailable([0, 1, 2, 3]);
  const chains = [fresh.pop(), fresh.pop(), fresh.pop(), fresh.pop()];
  ring.availFlags = 1; // ignored with EVENT_IDX (§2.7.7.2)
  ring.usedEvent = 65535; // notify once the entry at 65535 is written
  fresh.push(chains[0]!, 1);
  assert.equal(fresh.publish(), false, 'wrote entry 65534 only');
  fresh.push(chains[1]!, 1);
  fresh.push(chains[2]!, 1);
  assert.equal(fresh.publish(), true, 'wrote 65535 and 0');
  assert.equal(ring.usedIdx, 1);
  assert.deepEqual(ring.usedElem(65535), { id: 1, len: 1 });
  ring.usedEvent = 0; // already passed
  fresh.push(chains[3]!, 1);
  assert.equal(fresh.publish(), false);
});

test('needEvent is vring_need_event with 16-bit wrapping', () => {
  assert.equal(needEvent(5, 6, 5), true);
  assert.equal(needEvent(5, 5, 4), false);
  assert.equal(needEvent(5, 10, 6), false);
  assert.equal(needEvent(65535, 1, 65534), true);
  assert.equal(needEvent(0, 1, 65535), true);
  assert.equal(needEvent(65534, 3, 65535), false);
  assert.equal(needEvent(7, 7, 7), false);
});

test('available buffer notifications: flags without EVENT_IDX, avail_event with it', () => {
  {
    const { ring, dev } = device();
    dev.disableNotifications();
    assert.equal(ring.usedFlags, 1);
    assert.equal(dev.enableNotifications(), false);
    assert.equal(ring.usedFlags, 0);
    ring.writeDesc(0, DATA, 8, 0);
    ring.makeAvailable([0]);
    assert.equal(dev.enableNotifications(), true, 'a buffer is waiting');
  }
  {
    const { ring, dev } = device(8, { eventIdx: true }, 40000);
    ring.availIdx = 40000;
    assert.equal(dev.enableNotifications(), false);
    assert.equal(ring.usedFlags, 0, 'flags stay 0 with EVENT_IDX');
    assert.equal(ring.availEvent, 40000);
    dev.disableNotifications();
    assert.equal(ring.usedFlags, 0);
    assert.equal(needEvent(ring.availEvent, 40008, 40000), false, 'no full ring reaches a disabled avail_event');
    ring.writeDesc(0, DATA, 8, 0);
    ring.makeAvailable([0], 40000);
    assert.equal(dev.enableNotifications(), true);
    assert.ok(dev.pop());
    assert.equal(dev.enableNotifications(), false);
    assert.equal(ring.availEvent, 40001);
  }
});

test('base resumes popping from a given available index', () => {
  const { ring } = device();
  for (let i = 0; i < 3; i++) ring.writeDesc(i, DATA, 8, 0);
  ring.makeAvailable([0, 1, 2]);
  const dev = new SplitDeviceQueue(ring.memory, ring.config, 'vq0', 2);
  assert.equal(dev.base, 2);
  assert.equal(dev.pop()?.id, 2);
  assert.equal(dev.pop(), null);
  assert.equal(dev.base, 3);
});

test('IN_ORDER: a batch of wholly written buffers returns as one used element (§2.7.9)', () => {
  const { ring, dev } = device(8, { inOrder: true });
  for (let i = 0; i < 5; i++) ring.writeDesc(i, DATA + 0x10 * i, 8, WRITE);
  ring.makeAvailable([0, 1, 2, 3, 4]);
  const chains = [0, 1, 2, 3, 4].map(() => dev.pop()!);
  assert.throws(() => dev.push(chains[1], 8), RangeError, 'pushed out of order');
  dev.push(chains[0], 8);
  dev.push(chains[1], 8);
  dev.push(chains[2], 5); // partly written: ends the batch
  dev.push(chains[3], 8);
  assert.equal(dev.publish(), true);
  assert.equal(ring.usedIdx, 4);
  assert.deepEqual(ring.usedElem(0), { id: 2, len: 5 }, 'buffers 0 and 1 skipped, 2 names the batch');
  assert.deepEqual(ring.usedElem(3), { id: 3, len: 8 });
  dev.push(chains[4], 2);
  dev.publish();
  assert.equal(ring.usedIdx, 5);
  assert.deepEqual(ring.usedElem(4), { id: 4, len: 2 });
});

test('resubmit hands a chain out again by its head without moving the available index', () => {
  const { ring, dev } = device(8, {}, 3);
  ring.writeDesc(5, DATA, 16, NEXT, 6);
  ring.writeDesc(6, DATA + 16, 32, WRITE);
  ring.writeDesc(1, DATA + 64, 8, 0);
  // Entries 0-2 were consumed before a restart; entry 3 is the next new one.
  ring.makeAvailable([1], 3);
  const again = dev.resubmit({ id: 5, descriptors: [] });
  assert.equal(again.id, 5);
  assert.equal(again.readableLength, 16);
  assert.equal(again.writableLength, 32);
  assert.equal(dev.inFlight, 1);
  assert.equal(dev.base, 3, 'resubmitting leaves the available index alone');
  assert.equal(dev.pop()?.id, 1);
  dev.push(again, 32);
  assert.equal(dev.publish(), true);
  assert.deepEqual(ring.usedElem(0), { id: 5, len: 32 });
});

test('resubmit refuses heads out of range, heads in flight, and broken chains', () => {
  const { ring, dev } = device(8);
  const refuses = (head: number, rule: string): void =>
    assert.throws(() => dev.resubmit({ id: head, descriptors: [] }), (e: unknown) => e instanceof VirtqueueError && e.rule === rule);
  refuses(8, 'head out of range');
  refuses(-1, 'head out of range');
  refuses(1.5, 'head out of range');
  ring.writeDesc(2, DATA, 16, 0);
  dev.resubmit({ id: 2, descriptors: [] });
  refuses(2, 'head already in flight');
  ring.writeDesc(4, DATA, 16, NEXT, 9);
  refuses(4, 'next out of range');
  assert.equal(dev.inFlight, 1, 'a refused head is not in flight');
  // A head taken by resubmission cannot then be popped from the ring as well.
  ring.makeAvailable([2]);
  assertViolation(dev, 'head already in flight');
});

test('IN_ORDER: resubmitted chains return before those popped after them', () => {
  const { ring, dev } = device(8, { inOrder: true }, 2);
  for (const i of [0, 1, 2]) ring.writeDesc(i, DATA + 64 * i, 16, WRITE);
  ring.makeAvailable([2], 2);
  const a = dev.resubmit({ id: 0, descriptors: [] });
  const b = dev.resubmit({ id: 1, descriptors: [] });
  const c = dev.pop()!;
  assert.throws(() => dev.push(c, 16), RangeError);
  dev.push(a, 16);
  dev.push(b, 16);
  dev.push(c, 16);
  dev.publish();
  assert.equal(ring.usedIdx, 3);
});

test('unpop gives the newest chains back unused: the available index moves back over them, across the 16-bit wrap', () => {
  for (const inOrder of [false, true]) {
    const { ring, dev } = device(8, { inOrder }, 0xfffe);
    for (const i of [0, 1, 2]) ring.writeDesc(i, DATA + 64 * i, 16, WRITE);
    ring.makeAvailable([0, 1, 2], 0xfffe);
    const a = dev.pop()!;
    const b = dev.pop()!;
    const c = dev.pop()!;
    assert.equal(dev.base, 1);
    dev.unpop(c);
    dev.unpop(b);
    assert.equal(dev.base, 0xffff, 'back over the wrap of the available index');
    assert.equal(dev.inFlight, 1);
    assert.throws(() => dev.unpop(b), RangeError, 'a chain given back is not in flight');
    assert.throws(() => dev.push(b, 16), RangeError, 'nor can it be used');
    // The same heads come out again, and IN_ORDER holds them to the order of the pops.
    const b2 = dev.pop()!;
    const c2 = dev.pop()!;
    assert.deepEqual([b2.id, c2.id], [1, 2]);
    assert.equal(dev.pop(), null);
    dev.push(a, 16);
    dev.push(b2, 16);
    dev.push(c2, 4);
    dev.publish();
    assert.equal(ring.usedIdx, 3, 'each buffer used once');
    assert.deepEqual(ring.usedElem(0), inOrder ? { id: 2, len: 4 } : { id: 0, len: 16 });
    assert.equal(dev.inFlight, 0);
  }
});

test('unresubmit gives a resubmitted chain back without moving the available index', () => {
  const { ring, dev } = device(8, { inOrder: true }, 3);
  ring.writeDesc(5, DATA, 16, WRITE);
  const again = dev.resubmit({ id: 5, descriptors: [] });
  dev.unresubmit(again);
  assert.equal(dev.base, 3);
  assert.equal(dev.inFlight, 0);
  const third = dev.resubmit({ id: 5, descriptors: [] });
  dev.push(third, 16);
  dev.publish();
  assert.deepEqual(ring.usedElem(0), { id: 5, len: 16 });
});

/** Drain spans into a list of [offset into the region, length, first byte]. */
function drainAll(dev: SplitDeviceQueue, max = 64, goOn: (n: number) => boolean = () => true): { seen: number[][]; visited: number } {
  const seen: number[][] = [];
  const visited = dev.drainSpans((bytes, offset, length) => {
    seen.push([offset, length, bytes[offset]]);
    return goOn(seen.length);
  }, max);
  return { seen, visited };
}

test('drainSpans serves one-descriptor readable chains in place, returns them used with 0 bytes, and leaves any other chain to pop()', () => {
  const { ring, dev } = device();
  ring.memory.slice(DATA, 0x30).set([...Array(0x30).keys()]);
  ring.writeDesc(0, DATA, 16, 0);
  ring.writeDesc(1, DATA + 0x10, 8, 0);
  ring.writeDesc(2, DATA + 0x20, 4, NEXT, 3); // two descriptors: pop()'s
  ring.writeDesc(3, DATA + 0x24, 4, 0);
  ring.writeDesc(4, DATA + 0x28, 4, 0);
  ring.makeAvailable([0, 1, 2, 4]);
  assert.deepEqual(drainAll(dev), { seen: [[DATA, 16, 0], [DATA + 0x10, 8, 0x10]], visited: 2 });
  assert.equal(dev.inFlight, 0);
  assert.equal(drainAll(dev).visited, 0, 'stops before the chain of two descriptors');
  const chain = dev.pop();
  assert.equal(chain?.id, 2);
  assert.equal(chain.readableLength, 8);
  assert.deepEqual(drainAll(dev).seen, [[DATA + 0x28, 4, 0x28]]);
  dev.push(chain, 0);
  dev.publish();
  assert.equal(ring.usedIdx, 4);
  assert.deepEqual([0, 1, 2, 3].map((i) => ring.usedElem(i)), [
    { id: 0, len: 0 },
    { id: 1, len: 0 },
    { id: 4, len: 0 },
    { id: 2, len: 0 },
  ]);
});

test('drainSpans leaves writable and indirect descriptors to pop(), and stops at max', () => {
  const { ring, dev } = device(8, { indirect: true });
  ring.writeDesc(0, DATA, 8, WRITE);
  ring.writeDesc(1, DATA + 0x100, 16, INDIRECT);
  ring.writeDesc(0, DATA + 0x200, 4, 0, 0, DATA + 0x100);
  for (let i = 2; i < 5; i++) ring.writeDesc(i, DATA + 0x10 * i, 4, 0);
  ring.makeAvailable([0, 1, 2, 3, 4]);
  assert.equal(drainAll(dev).visited, 0);
  assert.equal(dev.pop()?.writableLength, 8);
  assert.equal(drainAll(dev).visited, 0);
  assert.equal(dev.pop()?.readableLength, 4);
  assert.equal(drainAll(dev, 2).visited, 2);
  assert.equal(drainAll(dev, 2).visited, 1);
  assert.equal(dev.inFlight, 2, 'the two popped chains, not the drained ones');
});

test('drainSpans checks heads, buffers and the avail index as pop() does', () => {
  const rule = (name: string) => (e: unknown) => e instanceof VirtqueueError && e.rule === name;
  let { ring, dev } = device();
  ring.makeAvailable([8]);
  assert.throws(() => drainAll(dev), rule('head out of range'));
  ({ ring, dev } = device());
  ring.writeDesc(0, 0x7_ffff_fff0, 16, 0);
  ring.makeAvailable([0]);
  assert.throws(() => drainAll(dev), rule('buffer outside guest memory'));
  ({ ring, dev } = device());
  ring.writeDesc(0, DATA + 0x7_fff0, 0x20, 0); // runs past the end of guest memory
  ring.makeAvailable([0]);
  assert.throws(() => drainAll(dev), rule('buffer outside guest memory'));
  ({ ring, dev } = device());
  ring.availIdx = 9;
  assert.throws(() => drainAll(dev), rule('avail index jump'));
  ({ ring, dev } = device());
  ring.writeDesc(0, DATA, 8, 0);
  ring.writeDesc(1, DATA, 8, WRITE);
  ring.makeAvailable([1, 0]);
  const held = dev.pop();
  assert.ok(held);
  assert.equal(drainAll(dev).visited, 1, 'head 0 served');
  ring.makeAvailable([1]);
  assert.throws(() => drainAll(dev), rule('head already in flight'), 'head 1 is still held');
});

test('drainSpans stops after a visit that returns false, holding that chain, and publishes nothing of it', () => {
  const { ring, dev } = device();
  for (let i = 0; i < 3; i++) ring.writeDesc(i, DATA + 0x10 * i, 4, 0);
  ring.makeAvailable([0, 1, 2]);
  assert.equal(drainAll(dev, 64, (n) => n < 2).visited, 2);
  assert.equal(dev.inFlight, 1);
  dev.publish();
  assert.equal(ring.usedIdx, 1);
});

test('drainSpans with IN_ORDER serves nothing while a popped chain is in flight, then batches in order (§2.7.9)', () => {
  const { ring, dev } = device(8, { inOrder: true });
  for (let i = 0; i < 4; i++) ring.writeDesc(i, DATA + 0x10 * i, 4, i === 0 ? WRITE : 0);
  ring.makeAvailable([0, 1, 2, 3]);
  const first = dev.pop();
  assert.ok(first);
  assert.equal(drainAll(dev).visited, 0);
  dev.push(first, 4);
  assert.equal(drainAll(dev).visited, 3);
  assert.equal(dev.publish(), true);
  assert.equal(ring.usedIdx, 4);
  assert.deepEqual(ring.usedElem(0), { id: 3, len: 0 }, 'one element names the whole batch');
  ring.writeDesc(4, DATA, 4, WRITE);
  ring.makeAvailable([4]);
  const next = dev.pop();
  assert.ok(next);
  dev.push(next, 1);
  dev.publish();
  assert.deepEqual(ring.usedElem(4), { id: 4, len: 1 }, 'pop and push stay in step after drained chains');
});
