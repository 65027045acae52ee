/**
 * Chains of one direct descriptor, which both ring layouts pop without walking (ChainBuilder.single)
 * and both drivers add without the multi-segment machinery: the same chain records, the same
 * checks in the same order, and the same errors as a chain of several descriptors gets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChainReader } from '../../../src/virtio/chain-io.ts';
import { DescFlag } from '../../../src/virtio/constants.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { VirtqueueError, type DescriptorChain, type DeviceQueue, type DriverQueue, type QueueConfig, type Segment } from '../../../src/virtio/queue.ts';
import { PackedDeviceQueue, PackedDriverQueue, packedRingLayout } from '../../../src/virtio/packed-ring.ts';
import { SplitDeviceQueue, SplitDriverQueue, placeRingAreas, splitRingLayout } from '../../../src/virtio/split-ring.ts';

const { NEXT, WRITE, INDIRECT, AVAIL } = DescFlag;
const RING = 0x1000;
const DATA = 0x10000;
const MEMORY_BYTES = 0x40000;
const LAYOUTS = ['split', 'packed'] as const;
type Layout = (typeof LAYOUTS)[number];

function pair(layout: Layout, size: number, features: Partial<QueueConfig> = {}) {
  const memory = GuestMemory.allocate(MEMORY_BYTES);
  const areas = placeRingAreas(layout === 'split' ? splitRingLayout(size) : packedRingLayout(size), RING);
  const config: QueueConfig = { ...areas, size, eventIdx: false, indirect: false, inOrder: false, ...features };
  const drv: DriverQueue<number> =
    layout === 'split' ? new SplitDriverQueue<number>(memory, config, 'q') : new PackedDriverQueue<number>(memory, config, 'q');
  const dev: DeviceQueue = layout === 'split' ? new SplitDeviceQueue(memory, config, 'q') : new PackedDeviceQueue(memory, config, 'q');
  return { memory, config, drv, dev };
}

function violates(rule: string): (e: unknown) => boolean {
  return (e) => e instanceof VirtqueueError && e.rule === rule;
}

/** What a device sees of a chain: its id, slots, lengths and the bytes of each part. */
function contents(chain: DescriptorChain) {
  const reader = new ChainReader(chain);
  return {
    id: chain.id,
    ringDescriptors: chain.ringDescriptors,
    readableLength: chain.readableLength,
    writableLength: chain.writableLength,
    readable: [...(reader.readExact(chain.readableLength) ?? [])],
    writable: chain.writable.map((v) => [...v]),
  };
}

for (const layout of LAYOUTS) {
  test(`${layout}: one-descriptor chains, readable or writable, alternate with longer ones on the same records and read right`, () => {
    const { memory, drv, dev } = pair(layout, 4);
    for (let n = 0; n < 48; n++) {
      const at = DATA + (n % 7) * 0x100;
      memory.write(at, Uint8Array.of(n, n + 1, n + 2));
      const kind = n % 3;
      // 0: one readable descriptor; 1: one writable; 2: a readable one and two writable ones.
      const out: Segment[] = kind === 1 ? [] : [{ addr: at, len: 3 }];
      const inSegs: Segment[] = kind === 0 ? [] : kind === 1 ? [{ addr: at + 0x10, len: 5 }] : [{ addr: at + 0x10, len: 2 }, { addr: at + 0x20, len: 4 }];
      assert.equal(drv.add(out, inSegs, n), true);
      drv.kick();
      const chain = dev.pop();
      assert.ok(chain, `buffer ${n} popped`);
      const seen = contents(chain);
      assert.deepEqual(
        { ...seen, id: undefined },
        {
          id: undefined,
          ringDescriptors: kind === 2 ? 3 : 1,
          readableLength: kind === 1 ? 0 : 3,
          writableLength: kind === 0 ? 0 : kind === 1 ? 5 : 6,
          readable: kind === 1 ? [] : [n, n + 1, n + 2],
          writable: kind === 0 ? [] : kind === 1 ? [[...memory.slice(at + 0x10, 5)]] : [[...memory.slice(at + 0x10, 2)], [...memory.slice(at + 0x20, 4)]],
        },
        `buffer ${n}`,
      );
      dev.push(chain, chain.writableLength);
      dev.publish();
      const used = drv.getUsed();
      assert.deepEqual(used && { token: used.token, len: used.len }, { token: n, len: chain.writableLength });
    }
  });

  test(`${layout}: a one-descriptor chain held in flight is not touched while hostile and good chains come and go`, () => {
    const { memory, drv, dev } = pair(layout, 8);
    memory.write(DATA, Uint8Array.of(7, 7, 7, 7));
    assert.equal(drv.add([{ addr: DATA, len: 4 }], [], 0), true);
    drv.kick();
    const held = dev.pop()!;
    const before = contents(held);
    const views = held.readable;
    for (let n = 1; n < 20; n++) {
      assert.equal(drv.add([], [{ addr: DATA + 0x100 + n * 8, len: 8 }], n), true);
      drv.kick();
      const chain = dev.pop()!;
      assert.notEqual(chain, held);
      dev.push(chain, 8);
      dev.publish();
      assert.equal(drv.getUsed()?.token, n);
    }
    assert.deepEqual(contents(held), before);
    assert.equal(held.readable, views, 'the same views');
  });

  test(`${layout}: a one-segment buffer the driver got wrong is refused before anything changes`, () => {
    const { drv, dev } = pair(layout, 4);
    const free = drv.freeDescriptors;
    for (const seg of [
      { addr: -16, len: 4 },
      { addr: 2 ** 53, len: 4 },
      { addr: 1.5, len: 4 },
      { addr: DATA, len: -1 },
      { addr: DATA, len: 2 ** 32 },
      { addr: DATA, len: 0.5 },
    ]) {
      assert.throws(() => drv.add([seg], [], 9), RangeError, `readable ${seg.len} bytes at ${seg.addr}`);
      assert.throws(() => drv.add([], [seg], 9), RangeError, `writable ${seg.len} bytes at ${seg.addr}`);
      assert.throws(() => drv.addSegment(seg.addr, seg.len, false, 9), RangeError, `addSegment: readable ${seg.len} bytes at ${seg.addr}`);
      assert.throws(() => drv.addSegment(seg.addr, seg.len, true, 9), RangeError, `addSegment: writable ${seg.len} bytes at ${seg.addr}`);
    }
    assert.equal(drv.freeDescriptors, free);
    drv.kick();
    assert.equal(dev.pop(), null, 'nothing was made available');
    assert.equal(drv.add([], [{ addr: DATA, len: 4 }], 1), true);
    drv.kick();
    assert.deepEqual(
      (({ id, writableLength }) => ({ id, writableLength }))(dev.pop()!),
      { id: 0, writableLength: 4 },
      'the next good buffer takes the first descriptor',
    );
  });

  test(`${layout}: one-segment buffers fill the ring, then add() says false until one comes back`, () => {
    const { drv, dev } = pair(layout, 4);
    for (let n = 0; n < 4; n++) assert.equal(drv.add([], [{ addr: DATA + n * 16, len: 16 }], n), true);
    assert.equal(drv.add([], [{ addr: DATA, len: 16 }], 4), false);
    assert.equal(drv.freeDescriptors, 0);
    drv.kick();
    const chain = dev.pop()!;
    dev.push(chain, 3);
    dev.publish();
    assert.deepEqual((({ token, len }) => ({ token, len }))(drv.getUsed()!), { token: 0, len: 3 });
    assert.equal(drv.add([{ addr: DATA, len: 16 }], [], 4), true);
  });
}

for (const layout of LAYOUTS) {
  for (const inOrder of [false, true]) {
    test(`${layout}${inOrder ? ', IN_ORDER' : ''}: addSegment() places what add() places, and takeUsed() returns what getUsed() would, at most max at a time`, () => {
      const { drv, dev } = pair(layout, 8, { inOrder });
      // Readable and writable buffers through both ways in, tokens 0..5.
      for (let n = 0; n < 6; n++) {
        const write = n % 2 === 1;
        const seg = { addr: DATA + n * 0x100, len: 32 + n };
        const added = n < 3 ? drv.addSegment(seg.addr, seg.len, write, n) : write ? drv.add([], [seg], n) : drv.add([seg], [], n);
        assert.equal(added, true);
      }
      drv.kick();
      const chains = Array.from({ length: 6 }, () => dev.pop()!);
      assert.deepEqual(
        chains.map((c) => [c.readableLength, c.writableLength]),
        [[32, 0], [0, 33], [34, 0], [0, 35], [36, 0], [0, 37]],
        'the device sees each segment where it was given',
      );
      // Wholly written buffers: with IN_ORDER the device returns them as one run (§2.7.9, §2.8.8).
      for (const c of chains.slice(0, 5)) dev.push(c, c.writableLength);
      dev.publish();
      const tokens: (number | undefined)[] = new Array(8).fill(undefined);
      const lens = new Float64Array(8);
      assert.equal(drv.takeUsed(tokens, lens, 3), 3, 'no more than max');
      assert.deepEqual([tokens.slice(0, 3), [...lens.subarray(0, 3)]], [[0, 1, 2], [0, 33, 0]]);
      assert.equal(drv.takeUsed(tokens, lens, 8), 2, 'the rest of what was used');
      assert.deepEqual([tokens.slice(0, 2), [...lens.subarray(0, 2)]], [[3, 4], [35, 0]]);
      assert.equal(drv.takeUsed(tokens, lens, 8), 0, 'nothing more used');
      dev.push(chains[5], 7);
      dev.publish();
      assert.equal(drv.takeUsed(tokens, lens, 8), 1);
      assert.deepEqual([tokens[0], lens[0]], [5, 7]);
      assert.equal(drv.freeDescriptors, 8);
    });
  }
}

test('split: takeUsed() returns the buffers before a used index that runs ahead, and the next call raises the fault', () => {
  const { memory, config, drv, dev } = pair('split', 4);
  for (let n = 0; n < 3; n++) assert.equal(drv.addSegment(DATA + n * 0x100, 16, true, n), true);
  drv.kick();
  for (let n = 0; n < 2; n++) dev.push(dev.pop()!, 16);
  dev.publish();
  // used->idx moved on by 5 in all, with 3 buffers available: the device lies about the last 3.
  memory.writeU16(config.device + 2, 5);
  const tokens: (number | undefined)[] = [];
  const lens = new Float64Array(4);
  assert.throws(() => drv.takeUsed(tokens, lens, 4), violates('used index jump'), 'the index is read whole, before any buffer');
  memory.writeU16(config.device + 2, 2);
  assert.equal(drv.takeUsed(tokens, lens, 4), 2);
  assert.deepEqual(tokens, [0, 1]);
  memory.writeU16(config.device + 2, 3);
  memory.writeU32(config.device + 4 + 8 * 2, 3);
  assert.throws(() => drv.takeUsed(tokens, lens, 4), violates('used id not in flight'));
  assert.equal(drv.freeDescriptors, 3, 'the fault changed nothing');
});

test('packed: takeUsed() returns the buffers before a hostile used descriptor, and the next call raises the fault', () => {
  const { memory, config, drv, dev } = pair('packed', 4);
  for (let n = 0; n < 3; n++) assert.equal(drv.addSegment(DATA + n * 0x100, 16, true, n), true);
  drv.kick();
  for (let n = 0; n < 2; n++) dev.push(dev.pop()!, 16);
  dev.publish();
  // Slot 2 marked used (both flags equal the wrap counter, 1), naming buffer id 3, never added.
  memory.writeU16(config.desc + 16 * 2 + 12, 3);
  memory.writeU16(config.desc + 16 * 2 + 14, AVAIL | (1 << 15));
  const tokens: (number | undefined)[] = [];
  const lens = new Float64Array(4);
  assert.equal(drv.takeUsed(tokens, lens, 4), 2, 'the buffers used before the fault');
  assert.deepEqual([tokens, [...lens.subarray(0, 2)]], [[0, 1], [16, 16]]);
  assert.throws(() => drv.takeUsed(tokens, lens, 4), violates('used id not in flight'));
  assert.throws(() => drv.takeUsed(tokens, lens, 4), violates('used id not in flight'), 'raised again: nothing moved');
  assert.equal(drv.freeDescriptors, 3);
});

/** A split ring's descriptor `i`, written as a hostile driver would. */
function putSplit(memory: GuestMemory, config: QueueConfig, i: number, addr: number, len: number, flags: number, next = 0): void {
  memory.writeU64(config.desc + 16 * i, BigInt(addr));
  memory.writeU32(config.desc + 16 * i + 8, len);
  memory.writeU16(config.desc + 16 * i + 12, flags);
  memory.writeU16(config.desc + 16 * i + 14, next);
}

/** Make `heads` available after the entries already there (avail ring of a split queue of `size`). */
function makeAvailable(memory: GuestMemory, config: QueueConfig, heads: readonly number[]): void {
  let idx = memory.readU16(config.driver + 2);
  for (const h of heads) {
    memory.writeU16(config.driver + 4 + 2 * (idx % config.size), h);
    idx = (idx + 1) & 0xffff;
  }
  memory.writeU16(config.driver + 2, idx);
}

test('split: a hostile one-descriptor chain gets the errors a longer one gets, and takes nothing in flight', () => {
  const cases: { name: string; rule: string; write: (m: GuestMemory, c: QueueConfig) => void; features?: Partial<QueueConfig> }[] = [
    { name: 'head beyond the table', rule: 'head out of range', write: (m, c) => makeAvailable(m, c, [8]) },
    { name: 'buffer past the end of memory', rule: 'buffer outside guest memory', write: (m, c) => { putSplit(m, c, 0, MEMORY_BYTES - 2, 4, WRITE); makeAvailable(m, c, [0]); } },
    { name: 'buffer above 2^53', rule: 'buffer outside guest memory', write: (m, c) => { putSplit(m, c, 0, 2 ** 60, 4, 0); makeAvailable(m, c, [0]); } },
    { name: 'INDIRECT without the feature', rule: 'indirect not negotiated', write: (m, c) => { putSplit(m, c, 0, DATA, 16, INDIRECT); makeAvailable(m, c, [0]); } },
    { name: 'NEXT out of the table', rule: 'next out of range', write: (m, c) => { putSplit(m, c, 0, DATA, 4, NEXT, 8); makeAvailable(m, c, [0]); } },
  ];
  for (const c of cases) {
    const { memory, config } = pair('split', 8);
    const dev = new SplitDeviceQueue(memory, { ...config, ...c.features }, 'q');
    c.write(memory, config);
    assert.throws(() => dev.pop(), violates(c.rule), c.name);
    assert.equal(dev.inFlight, 0, c.name);
    assert.equal(dev.base, 0, `${c.name}: the avail index did not move`);
  }
  {
    const { memory, config } = pair('split', 8);
    const dev = new SplitDeviceQueue(memory, config, 'q');
    memory.write(DATA, Uint8Array.of(1, 2));
    putSplit(memory, config, 3, DATA, 2, 0);
    makeAvailable(memory, config, [3]);
    const held = dev.pop()!;
    // The driver makes head 3 available again with another buffer: refused, the held chain unchanged.
    putSplit(memory, config, 3, DATA + 0x40, 9, WRITE);
    makeAvailable(memory, config, [3]);
    assert.throws(() => dev.pop(), violates('head already in flight'));
    assert.deepEqual(contents(held), { id: 3, ringDescriptors: 1, readableLength: 2, writableLength: 0, readable: [1, 2], writable: [] });
  }
});

/** Packed descriptor `i` with its flags (write the head last, as a driver would). */
function putPacked(memory: GuestMemory, config: QueueConfig, i: number, addr: number, len: number, id: number, flags: number): void {
  memory.writeU64(config.desc + 16 * i, BigInt(addr));
  memory.writeU32(config.desc + 16 * i + 8, len);
  memory.writeU16(config.desc + 16 * i + 12, id);
  memory.writeU16(config.desc + 16 * i + 14, flags);
}

test('packed: a hostile one-descriptor chain gets the errors a longer one gets, in the same order, and takes nothing', () => {
  const cases: { name: string; rule: string; addr: number; len: number; id: number; flags: number }[] = [
    { name: 'id beyond the ring', rule: 'buffer id out of range', addr: DATA, len: 4, id: 8, flags: AVAIL },
    { name: 'buffer past the end of memory', rule: 'buffer outside guest memory', addr: MEMORY_BYTES - 2, len: 4, id: 0, flags: AVAIL | WRITE },
    // The buffer is checked before the id, as for a chain of several descriptors.
    { name: 'bad buffer and bad id', rule: 'buffer outside guest memory', addr: 2 ** 60, len: 4, id: 9, flags: AVAIL },
    { name: 'INDIRECT without the feature', rule: 'indirect not negotiated', addr: DATA, len: 16, id: 0, flags: AVAIL | INDIRECT },
  ];
  for (const c of cases) {
    const { memory, config, dev } = pair('packed', 8);
    putPacked(memory, config, 0, c.addr, c.len, c.id, c.flags);
    assert.throws(() => dev.pop(), violates(c.rule), c.name);
    assert.throws(() => dev.pop(), violates(c.rule), `${c.name}: the queue stays stopped on the same fault`);
    assert.equal(dev.inFlight, 0, c.name);
    assert.equal(dev.base, 0x8000_8000, `${c.name}: the position did not move`);
  }
  {
    const { memory, config, dev } = pair('packed', 8);
    memory.write(DATA, Uint8Array.of(5, 6));
    putPacked(memory, config, 0, DATA, 2, 4, AVAIL);
    const held = dev.pop()!;
    // The same buffer id made available again while held, with another buffer: refused, the held chain unchanged.
    putPacked(memory, config, 1, DATA + 0x40, 9, 4, AVAIL | WRITE);
    assert.throws(() => dev.pop(), violates('buffer id in use'));
    assert.deepEqual(contents(held), { id: 4, ringDescriptors: 1, readableLength: 2, writableLength: 0, readable: [5, 6], writable: [] });
  }
});
