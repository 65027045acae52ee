import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DescFlag } from '../../../src/virtio/constants.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { type QueueConfig, VirtqueueError } from '../../../src/virtio/queue.ts';
import {
  PACKED_FRESH_BASE,
  PackedDeviceQueue,
  PackedDriverQueue,
  RingEventFlags,
  packedRingLayout,
} from '../../../src/virtio/packed-ring.ts';

const { NEXT, WRITE, INDIRECT, AVAIL, USED } = DescFlag;
const RING = 0x1000;
const DATA = 0x8000;

interface Desc {
  addr: number;
  len: number;
  id: number;
  flags: number;
}

/** A queue in fresh guest memory, and direct access to its ring as a hand-crafting driver or device sees it. */
function setup(size: number, features: Partial<Pick<QueueConfig, 'eventIdx' | 'indirect' | 'inOrder'>> = {}) {
  const mem = GuestMemory.allocate(0x20000);
  const config: QueueConfig = {
    size,
    desc: RING,
    driver: RING + 16 * size,
    device: RING + 16 * size + 4,
    eventIdx: false,
    indirect: false,
    inOrder: false,
    ...features,
  };
  const writeDesc = (at: number, d: Desc): void => {
    mem.writeU64(at, BigInt(d.addr));
    mem.writeU32(at + 8, d.len);
    mem.writeU16(at + 12, d.id);
    mem.writeU16(at + 14, d.flags);
  };
  return {
    mem,
    config,
    /** Write ring descriptor i (flags included, so write heads last as a driver would). */
    put: (i: number, d: Desc) => writeDesc(RING + 16 * i, d),
    /** Write entry i of an indirect table at `table`. */
    putIndirect: (table: number, i: number, d: Desc) => writeDesc(table + 16 * i, d),
    read: (i: number): Desc => ({
      addr: Number(mem.readU64(RING + 16 * i)),
      len: mem.readU32(RING + 16 * i + 8),
      id: mem.readU16(RING + 16 * i + 12),
      flags: mem.readU16(RING + 16 * i + 14),
    }),
    setDriverEvent: (flags: number, off = 0, wrap = 0) => {
      mem.writeU16(config.driver, off | (wrap << 15));
      mem.writeU16(config.driver + 2, flags);
    },
    setDeviceEvent: (flags: number, off = 0, wrap = 0) => {
      mem.writeU16(config.device, off | (wrap << 15));
      mem.writeU16(config.device + 2, flags);
    },
    event: (addr: number) => {
      const offWrap = mem.readU16(addr);
      return { flags: mem.readU16(addr + 2), off: offWrap & 0x7fff, wrap: offWrap >> 15 };
    },
  };
}

/** AVAIL/USED bits of a descriptor the driver makes available in a lap with wrap counter `wrap`. */
const avail = (wrap: 0 | 1): number => (wrap ? AVAIL : USED);
/** AVAIL/USED bits of a descriptor the device used in a lap with wrap counter `wrap`. */
const used = (wrap: 0 | 1): number => (wrap ? AVAIL | USED : 0);

function violates(rule: string): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof VirtqueueError, `expected a VirtqueueError, got ${String(e)}`);
    assert.equal(e.rule, rule);
    return true;
  };
}

/** A VRING_BASE value: avail position and wrap counter, used position and wrap counter. */
const base = (availPos: number, availWrap: 0 | 1, usedPos: number, usedWrap: 0 | 1): number =>
  (availPos | (availWrap << 15) | (usedPos << 16) | (usedWrap << 31)) >>> 0;

const text = (bytes: Uint8Array): string => Buffer.from(bytes).toString();

test('the layout is 16 bytes a descriptor at 16-byte alignment plus two 4-byte event structures', () => {
  assert.deepEqual(packedRingLayout(5), {
    desc: { size: 80, align: 16 },
    driver: { size: 4, align: 4 },
    device: { size: 4, align: 4 },
  });
  assert.throws(() => packedRingLayout(0), RangeError);
  assert.throws(() => packedRingLayout(32769), RangeError);
});

test('construction checks the size, alignment and placement the driver chose', () => {
  const { mem, config } = setup(4);
  for (const size of [0, 32769, 2.5, Number.NaN]) {
    assert.throws(() => new PackedDeviceQueue(mem, { ...config, size }, 'q'), violates('bad queue size'));
  }
  assert.throws(() => new PackedDeviceQueue(mem, { ...config, desc: RING + 8 }, 'q'), violates('misaligned ring'));
  assert.throws(() => new PackedDeviceQueue(mem, { ...config, driver: RING + 66 }, 'q'), violates('misaligned ring'));
  assert.throws(() => new PackedDriverQueue(mem, { ...config, device: RING + 2 }, 'q'), violates('misaligned ring'));
  assert.throws(
    () => new PackedDeviceQueue(mem, { ...config, desc: 0x20000 - 32 }, 'q'),
    violates('ring outside guest memory'),
  );
  assert.throws(() => new PackedDeviceQueue(mem, { ...config, device: 0x40000 }, 'q'), violates('ring outside guest memory'));
  const twoRegions = new GuestMemory([
    { guestAddr: 0, bytes: new Uint8Array(0x1000) },
    { guestAddr: 0x1000, bytes: new Uint8Array(0x1000) },
  ]);
  assert.throws(
    () => new PackedDeviceQueue(twoRegions, { ...config, desc: 0x1000 - 16 }, 'q'),
    violates('ring outside guest memory'),
    'a ring straddling two regions is refused even when they are adjacent',
  );
  // Packed rings need not be a power of two.
  assert.equal(new PackedDeviceQueue(mem, { ...config, size: 5, driver: RING + 80, device: RING + 84 }, 'q').size, 5);
});

test('a fresh ring is empty, and its base is 0x8000_8000 (both wrap counters 1)', () => {
  const { mem, config } = setup(4);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  assert.equal(dev.pop(), null, 'zeroed descriptors are not available');
  assert.equal(dev.base, PACKED_FRESH_BASE);
  assert.equal(PACKED_FRESH_BASE, 0x8000_8000);
  assert.equal(dev.inFlight, 0);
});

test('a chain is read in ring order: readable, then writable, id from its last descriptor', () => {
  const { mem, config, put } = setup(4);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  mem.write(DATA, Buffer.from('hello'));
  mem.write(DATA + 0x100, Buffer.from('world'));
  put(1, { addr: DATA + 0x100, len: 5, id: 0, flags: avail(1) | NEXT });
  put(2, { addr: DATA + 0x200, len: 64, id: 3, flags: avail(1) | WRITE });
  assert.equal(dev.pop(), null, 'nothing until the head is available');
  put(0, { addr: DATA, len: 5, id: 0, flags: avail(1) | NEXT });
  const chain = dev.pop();
  assert.ok(chain);
  assert.equal(chain.id, 3);
  assert.equal(chain.ringDescriptors, 3);
  assert.deepEqual(chain.readable.map(text), ['hello', 'world']);
  assert.equal(chain.readableLength, 10);
  assert.equal(chain.writableLength, 64);
  chain.writable[0].set([7, 8, 9]);
  assert.deepEqual([...mem.slice(DATA + 0x200, 3)], [7, 8, 9], 'writable views are guest memory itself');
  assert.equal(dev.pop(), null);
  assert.equal(dev.inFlight, 1);
  assert.equal(dev.base, base(3, 1, 0, 1), 'avail position 3, used still 0');
});

test('driver rule violations are VirtqueueErrors naming the rule, and change nothing', () => {
  const cases: { name: string; rule: string; size?: number; ring: (s: ReturnType<typeof setup>) => void }[] = [
    {
      name: 'id beyond the ring',
      rule: 'buffer id out of range',
      ring: ({ put }) => put(0, { addr: DATA, len: 4, id: 4, flags: avail(1) }),
    },
    {
      name: 'a later descriptor of the chain not available',
      rule: 'chain not available',
      ring: ({ put }) => {
        put(1, { addr: DATA, len: 4, id: 0, flags: avail(0) });
        put(0, { addr: DATA, len: 4, id: 0, flags: avail(1) | NEXT });
      },
    },
    {
      name: 'AVAIL and USED both set to the wrap counter',
      rule: 'bad avail flags',
      ring: ({ put }) => put(0, { addr: DATA, len: 4, id: 0, flags: used(1) }),
    },
    {
      name: 'readable after writable',
      rule: 'readable after writable',
      ring: ({ put }) => {
        put(1, { addr: DATA, len: 4, id: 0, flags: avail(1) });
        put(0, { addr: DATA, len: 4, id: 0, flags: avail(1) | NEXT | WRITE });
      },
    },
    {
      name: 'buffer outside guest memory',
      rule: 'buffer outside guest memory',
      ring: ({ put }) => put(0, { addr: 0x1f000, len: 0x2000, id: 0, flags: avail(1) }),
    },
    {
      name: 'buffer above 2^53',
      rule: 'buffer outside guest memory',
      ring: ({ mem }) => {
        mem.writeU64(RING, 0xffff_ffff_ffff_f000n);
        mem.writeU32(RING + 8, 16);
        mem.writeU16(RING + 14, avail(1));
      },
    },
    {
      name: 'a chain running all round the ring',
      rule: 'chain not available',
      ring: ({ put }) => {
        for (const i of [3, 2, 1, 0]) put(i, { addr: DATA, len: 1, id: 0, flags: avail(1) | NEXT });
      },
    },
    {
      name: 'INDIRECT without the feature',
      rule: 'indirect not negotiated',
      ring: ({ put }) => put(0, { addr: DATA, len: 16, id: 0, flags: avail(1) | INDIRECT }),
    },
  ];
  for (const c of cases) {
    const s = setup(c.size ?? 4);
    const dev = new PackedDeviceQueue(s.mem, s.config, 'q');
    c.ring(s);
    const before = s.mem.slice(RING, 4 * 16).slice();
    assert.throws(() => dev.pop(), violates(c.rule), c.name);
    assert.throws(() => dev.pop(), violates(c.rule), `${c.name}: the queue stays stopped on the same fault`);
    assert.deepEqual(s.mem.slice(RING, 4 * 16), before, `${c.name}: the ring is untouched`);
    assert.equal(dev.base, PACKED_FRESH_BASE, `${c.name}: the position did not move`);
    assert.equal(dev.inFlight, 0);
  }
});

test('a buffer id may not be made available again while in flight', () => {
  const { mem, config, put } = setup(4);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  put(0, { addr: DATA, len: 4, id: 2, flags: avail(1) });
  put(1, { addr: DATA, len: 4, id: 2, flags: avail(1) });
  const chain = dev.pop();
  assert.ok(chain);
  assert.throws(() => dev.pop(), violates('buffer id in use'));
  dev.push(chain, 0);
  dev.publish();
  assert.equal(dev.pop()?.id, 2, 'once used, the id is free again');
});

test('making available descriptors the device still holds is a ring overrun', () => {
  const { mem, config, put } = setup(4);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  put(1, { addr: DATA, len: 4, id: 0, flags: avail(1) | NEXT });
  put(2, { addr: DATA, len: 4, id: 0, flags: avail(1) });
  put(0, { addr: DATA, len: 4, id: 0, flags: avail(1) | NEXT });
  put(3, { addr: DATA, len: 4, id: 1, flags: avail(1) });
  assert.equal(dev.pop()?.ringDescriptors, 3);
  assert.equal(dev.pop()?.id, 1);
  // Slot 0 in the next lap, though the device has used nothing yet.
  put(0, { addr: DATA, len: 4, id: 2, flags: avail(0) });
  assert.throws(() => dev.pop(), violates('ring overrun'));
});

test('indirect descriptors: one ring slot, the table read whole, only WRITE honoured in entries', () => {
  const { mem, config, put, putIndirect } = setup(4, { indirect: true });
  const dev = new PackedDeviceQueue(mem, config, 'q');
  const table = DATA + 0x1000;
  mem.write(DATA, Buffer.from('req'));
  putIndirect(table, 0, { addr: DATA, len: 3, id: 99, flags: NEXT | INDIRECT });
  putIndirect(table, 1, { addr: DATA + 0x100, len: 8, id: 99, flags: WRITE });
  putIndirect(table, 2, { addr: DATA + 0x200, len: 1, id: 99, flags: WRITE | NEXT });
  put(0, { addr: table, len: 48, id: 1, flags: avail(1) | INDIRECT });
  const chain = dev.pop();
  assert.ok(chain);
  assert.equal(chain.id, 1);
  assert.equal(chain.ringDescriptors, 1);
  assert.deepEqual(chain.readable.map(text), ['req']);
  assert.deepEqual(
    chain.writable.map((b) => b.length),
    [8, 1],
  );
});

test('an indirect table may be longer than a small ring, up to 1024 entries (what Linux virtio_blk builds)', () => {
  const { mem, config, put, putIndirect } = setup(4, { indirect: true });
  const dev = new PackedDeviceQueue(mem, config, 'q');
  const table = DATA + 0x1000;
  const entries = 1024;
  for (let i = 0; i < entries; i++) putIndirect(table, i, { addr: DATA + i, len: 1, id: 0, flags: i > 0 ? WRITE : 0 });
  put(0, { addr: table, len: 16 * entries, id: 3, flags: avail(1) | INDIRECT });
  const chain = dev.pop();
  assert.ok(chain);
  assert.equal(chain.id, 3);
  assert.equal(chain.readable.length + chain.writable.length, entries);
  assert.equal(chain.ringDescriptors, 1);
});

test('indirect descriptor rules', () => {
  const cases: { name: string; rule: string; ring: (s: ReturnType<typeof setup>) => void }[] = [
    {
      name: 'INDIRECT with NEXT',
      rule: 'indirect in chain',
      ring: ({ put }) => {
        put(1, { addr: DATA, len: 4, id: 0, flags: avail(1) });
        put(0, { addr: DATA + 0x1000, len: 16, id: 0, flags: avail(1) | INDIRECT | NEXT });
      },
    },
    {
      name: 'INDIRECT later in a chain',
      rule: 'indirect in chain',
      ring: ({ put }) => {
        put(1, { addr: DATA + 0x1000, len: 16, id: 0, flags: avail(1) | INDIRECT });
        put(0, { addr: DATA, len: 4, id: 0, flags: avail(1) | NEXT });
      },
    },
    {
      name: 'table length not a multiple of 16',
      rule: 'bad indirect table length',
      ring: ({ put }) => put(0, { addr: DATA + 0x1000, len: 24, id: 0, flags: avail(1) | INDIRECT }),
    },
    {
      name: 'empty table',
      rule: 'bad indirect table length',
      ring: ({ put }) => put(0, { addr: DATA + 0x1000, len: 0, id: 0, flags: avail(1) | INDIRECT }),
    },
    {
      name: 'more entries than both the queue size and 1024',
      rule: 'indirect table too long',
      ring: ({ put }) => put(0, { addr: DATA + 0x1000, len: 1025 * 16, id: 0, flags: avail(1) | INDIRECT }),
    },
    {
      name: 'table outside guest memory',
      rule: 'indirect table outside guest memory',
      ring: ({ put }) => put(0, { addr: 0x1fff0, len: 32, id: 0, flags: avail(1) | INDIRECT }),
    },
    {
      name: 'a table entry outside guest memory',
      rule: 'buffer outside guest memory',
      ring: ({ put, putIndirect }) => {
        putIndirect(DATA + 0x1000, 0, { addr: 0x30000, len: 4, id: 0, flags: 0 });
        put(0, { addr: DATA + 0x1000, len: 16, id: 0, flags: avail(1) | INDIRECT });
      },
    },
  ];
  for (const c of cases) {
    const s = setup(4, { indirect: true });
    const dev = new PackedDeviceQueue(s.mem, s.config, 'q');
    c.ring(s);
    assert.throws(() => dev.pop(), violates(c.rule), c.name);
  }
});

test('used descriptors are written in push order, skipping each chain, the first flags last at publish', () => {
  const { mem, config, put, read } = setup(5);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  put(1, { addr: DATA, len: 16, id: 0, flags: avail(1) | WRITE });
  put(2, { addr: DATA + 0x100, len: 4, id: 1, flags: avail(1) });
  put(0, { addr: DATA, len: 4, id: 0, flags: avail(1) | NEXT });
  const a = dev.pop();
  const b = dev.pop();
  assert.ok(a && b);
  dev.push(b, 0);
  dev.push(a, 10);
  // The driver polls the batch's first descriptor; the rest may be written as chains are pushed.
  assert.equal(read(0).flags, avail(1) | NEXT, 'nothing is visible before publish');
  assert.equal(dev.inFlight, 0);
  dev.publish();
  assert.deepEqual(read(0), { addr: DATA, len: 0, id: 1, flags: used(1) }, 'b first, no WRITE: nothing written');
  assert.equal(read(1).id, 0);
  assert.equal(read(1).len, 10);
  assert.equal(read(1).flags, used(1) | WRITE);
  assert.equal(read(2).flags, avail(1), 'the third slot is skipped: a used 2 slots');
  assert.equal(dev.base, base(3, 1, 3, 1));
  assert.equal(dev.publish(), false, 'nothing new to publish');
});

test('push refuses a written length beyond the chain and a chain that is not in flight', () => {
  const { mem, config, put } = setup(4);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  put(0, { addr: DATA, len: 8, id: 0, flags: avail(1) | WRITE });
  const chain = dev.pop();
  assert.ok(chain);
  assert.throws(() => dev.push(chain, 9), RangeError);
  assert.throws(() => dev.push(chain, -1), RangeError);
  dev.push(chain, 8);
  assert.throws(() => dev.push(chain, 8), RangeError, 'pushed twice');
});

test('IN_ORDER: one used descriptor per run of wholly written chains, a partial write ends a run', () => {
  const { mem, config, put, read } = setup(7, { inOrder: true });
  const dev = new PackedDeviceQueue(mem, config, 'q');
  for (let i = 0; i < 4; i++) put(i, { addr: DATA + i * 0x100, len: 8, id: i, flags: avail(1) | WRITE });
  const chains = [0, 1, 2, 3].map(() => dev.pop());
  assert.throws(() => dev.push(chains[1]!, 8), RangeError, 'pushed out of order');
  dev.push(chains[0]!, 8);
  dev.push(chains[1]!, 3);
  dev.push(chains[2]!, 8);
  dev.push(chains[3]!, 8);
  dev.publish();
  assert.deepEqual(read(0), { addr: DATA, len: 3, id: 1, flags: used(1) | WRITE }, 'chains 0 and 1 in one');
  assert.deepEqual(read(2), { addr: DATA + 0x200, len: 8, id: 3, flags: used(1) | WRITE }, 'chains 2 and 3 in one');
  assert.equal(read(1).flags, avail(1) | WRITE, 'slot 1 skipped');
  assert.equal(read(3).flags, avail(1) | WRITE, 'slot 3 skipped');
  assert.equal(dev.base >>> 16, 0x8000 | 4);
});

test('used buffer notifications follow the driver event suppression structure', () => {
  for (const eventIdx of [false, true]) {
    const { mem, config, put, setDriverEvent } = setup(4, { eventIdx });
    const dev = new PackedDeviceQueue(mem, config, 'q');
    const cycle = (i: number): boolean => {
      put(i % 4, { addr: DATA, len: 4, id: 0, flags: avail(i < 4 ? 1 : 0) });
      const chain = dev.pop();
      assert.ok(chain);
      dev.push(chain, 0);
      return dev.publish();
    };
    setDriverEvent(RingEventFlags.ENABLE);
    assert.equal(cycle(0), true);
    setDriverEvent(RingEventFlags.DISABLE);
    assert.equal(cycle(1), false);
    setDriverEvent(RingEventFlags.DESC, 0, 0);
    assert.equal(cycle(2), !eventIdx, 'DESC without EVENT_IDX is not a valid suppression: notify');
    setDriverEvent(3);
    assert.equal(cycle(3), true, 'the reserved value notifies');
  }
});

test('DESC mode: notify exactly when the ring passes the descriptor named, across wraps', () => {
  const size = 5;
  const s = setup(size, { eventIdx: true });
  const dev = new PackedDeviceQueue(s.mem, s.config, 'q');
  // Drive the device round and round; in lap k the wrap counter is 1 - k % 2.
  let availPos = 0;
  let availWrap: 0 | 1 = 1;
  const useChains = (n: number): boolean => {
    for (let i = 0; i < n; i++) {
      s.put(availPos, { addr: DATA, len: 4, id: i, flags: avail(availWrap) });
      if (++availPos === size) {
        availPos = 0;
        availWrap = availWrap ? 0 : 1;
      }
      const chain = dev.pop();
      assert.ok(chain);
      dev.push(chain, 0);
    }
    return dev.publish();
  };
  assert.equal(useChains(3), true, 'ENABLE (the zeroed structure)');
  // Used position now 3 in lap 0 (wrap 1). Next publish moves it to 1 in lap 1 (wrap 0): passes 3, 4 (wrap 1) and 0 (wrap 0).
  const cases: [number, 0 | 1, boolean][] = [
    [3, 1, true],
    [4, 1, true],
    [0, 0, true],
    [1, 0, false],
    [2, 1, false],
    [0, 1, false],
    [2, 0, false],
  ];
  for (const [off, wrap, expected] of cases) {
    const probe = setup(size, { eventIdx: true });
    const probeDev = new PackedDeviceQueue(probe.mem, probe.config, 'q', base(3, 1, 3, 1));
    probe.put(3, { addr: DATA, len: 4, id: 0, flags: avail(1) });
    probe.put(4, { addr: DATA, len: 4, id: 1, flags: avail(1) });
    probe.put(0, { addr: DATA, len: 4, id: 2, flags: avail(0) });
    probe.setDriverEvent(RingEventFlags.DESC, off, wrap);
    for (let i = 0; i < 3; i++) {
      const chain = probeDev.pop();
      assert.ok(chain);
      probeDev.push(chain, 0);
    }
    assert.equal(probeDev.publish(), expected, `event at ${off} wrap ${wrap}`);
  }
  // The same on the long-running queue, lap after lap.
  for (let lap = 0; lap < 6; lap++) {
    const usedPos = dev.base >>> 16;
    const pos = usedPos & 0x7fff;
    const wrap = usedPos >> 15;
    s.setDriverEvent(RingEventFlags.DESC, (pos + 1) % size, pos + 1 === size ? 1 - wrap : wrap);
    assert.equal(useChains(1), false, `lap ${lap}: one short of the event`);
    assert.equal(useChains(1), true, `lap ${lap}: reaches the event`);
    assert.equal(useChains(3), false, `lap ${lap}: past it`);
  }
});

test('enableNotifications asks for the next descriptor and reports one that slipped in', () => {
  for (const eventIdx of [false, true]) {
    const { mem, config, put, event } = setup(5, { eventIdx });
    const dev = new PackedDeviceQueue(mem, config, 'q');
    dev.disableNotifications();
    assert.equal(event(config.device).flags, RingEventFlags.DISABLE);
    assert.equal(dev.enableNotifications(), false);
    assert.deepEqual(
      event(config.device),
      eventIdx ? { flags: RingEventFlags.DESC, off: 0, wrap: 1 } : { flags: RingEventFlags.ENABLE, off: 0, wrap: 0 },
    );
    put(0, { addr: DATA, len: 4, id: 0, flags: avail(1) });
    assert.equal(dev.enableNotifications(), true, 'a buffer arrived before the request was visible');
    for (let i = 1; i < 5; i++) put(i, { addr: DATA, len: 4, id: i, flags: avail(1) });
    for (let i = 0; i < 5; i++) dev.push(dev.pop()!, 0);
    dev.publish();
    assert.equal(dev.enableNotifications(), false, 'slot 0 still holds last lap\'s used descriptor');
    if (eventIdx) assert.deepEqual(event(config.device), { flags: RingEventFlags.DESC, off: 0, wrap: 0 });
  }
});

test('save and restore through base resume where the ring stood', () => {
  const { mem, config, put } = setup(5);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  for (let i = 0; i < 5; i++) put(i, { addr: DATA, len: 4, id: i, flags: avail(1) });
  for (let i = 0; i < 5; i++) dev.push(dev.pop()!, 0);
  dev.publish();
  put(0, { addr: DATA, len: 4, id: 0, flags: avail(0) });
  put(1, { addr: DATA, len: 4, id: 1, flags: avail(0) });
  const held = dev.pop();
  assert.ok(held);
  assert.equal(dev.base, base(1, 0, 0, 0), 'avail at 1, used at 0, both in the second lap');

  const restored = new PackedDeviceQueue(mem, config, 'q', dev.base);
  assert.equal(restored.base, dev.base);
  assert.equal(restored.pop()?.id, 1, 'continues after the chain popped before the save');
  restored.push(held, 0);
  restored.publish();
  assert.equal(restored.base, base(2, 0, 1, 0));
  assert.throws(() => new PackedDeviceQueue(mem, config, 'q', 5), violates('bad ring base'), 'position 5 of 5');
  assert.throws(
    () => new PackedDeviceQueue(mem, config, 'q', base(3, 0, 2, 1)),
    violates('bad ring base'),
    'avail more than a lap ahead of used',
  );
  assert.throws(() => new PackedDeviceQueue(mem, config, 'q', -1), violates('bad ring base'));
});

test('driver: buffers become visible at kick, and the device sees the segments given', () => {
  const { mem, config } = setup(5);
  const drv = new PackedDriverQueue<string>(mem, config, 'q');
  const dev = new PackedDeviceQueue(mem, config, 'q');
  mem.write(DATA, Buffer.from('ping'));
  assert.equal(drv.add([{ addr: DATA, len: 4 }], [{ addr: DATA + 0x100, len: 16 }], 'first'), true);
  assert.equal(drv.add([], [{ addr: DATA + 0x200, len: 8 }], 'second'), true);
  assert.equal(drv.freeDescriptors, 2);
  assert.equal(dev.pop(), null, 'not before kick');
  assert.equal(drv.kick(), true, 'the zeroed device event structure enables notifications');
  const a = dev.pop();
  const b = dev.pop();
  assert.ok(a && b);
  assert.deepEqual(a.readable.map(text), ['ping']);
  assert.equal(a.writableLength, 16);
  assert.equal(b.writableLength, 8);
  a.writable[0].set(Buffer.from('pong'));
  dev.push(b, 8);
  dev.push(a, 4);
  assert.equal(drv.getUsed(), null, 'not before publish');
  dev.publish();
  assert.deepEqual(drv.getUsed(), { token: 'second', len: 8 });
  assert.deepEqual(drv.getUsed(), { token: 'first', len: 4 });
  assert.equal(drv.getUsed(), null);
  assert.equal(text(mem.slice(DATA + 0x100, 4)), 'pong');
  assert.equal(drv.freeDescriptors, 5);
});

test('driver: add refuses when the ring or the ids run out, and refuses impossible buffers', () => {
  const { mem, config } = setup(3);
  const drv = new PackedDriverQueue<number>(mem, config, 'q');
  const seg = { addr: DATA, len: 4 };
  assert.equal(drv.add([seg, seg], [], 1), true);
  assert.equal(drv.add([seg, seg], [], 2), false, 'two slots needed, one free');
  assert.equal(drv.add([seg], [], 3), true);
  assert.equal(drv.add([seg], [], 4), false);
  assert.throws(() => drv.add([], [], 5), RangeError);
  assert.throws(() => drv.add([seg, seg, seg, seg], [], 5), RangeError, 'longer than the ring');
  assert.throws(() => drv.add([{ addr: -1, len: 4 }], [], 5), RangeError);
  assert.throws(() => drv.add([{ addr: 0, len: 2 ** 32 }], [], 5), RangeError);
});

test('driver: with indirect tables a multi-segment buffer takes one ring slot', () => {
  const { mem, config, read } = setup(4, { indirect: true });
  const tables = { addr: 0x10000, maxSegments: 3 };
  const drv = new PackedDriverQueue<number>(mem, config, 'q', { indirectTables: tables });
  const dev = new PackedDeviceQueue(mem, config, 'q');
  mem.write(DATA, Buffer.from('abc'));
  for (let i = 0; i < 4; i++) {
    assert.equal(drv.add([{ addr: DATA, len: 3 }], [{ addr: DATA + 0x100, len: 8 }, { addr: DATA + 0x200, len: 2 }], i), true);
  }
  assert.equal(drv.freeDescriptors, 0);
  drv.kick();
  assert.equal(read(0).flags & INDIRECT, INDIRECT);
  const chain = dev.pop();
  assert.ok(chain);
  assert.equal(chain.ringDescriptors, 1);
  assert.deepEqual(chain.readable.map(text), ['abc']);
  assert.deepEqual(chain.writable.map((b) => b.length), [8, 2]);
  assert.throws(
    () => new PackedDriverQueue<number>(mem, config, 'q', { indirectTables: { addr: 0x1fff0, maxSegments: 3 } }),
    RangeError,
  );
  const { mem: mem2, config: config2 } = setup(4);
  const direct = new PackedDriverQueue<number>(mem2, config2, 'q', { indirectTables: tables });
  assert.equal(direct.add([{ addr: DATA, len: 3 }, { addr: DATA, len: 3 }], [], 0), true);
  assert.equal(direct.freeDescriptors, 2, 'without the feature the tables go unused');
});

test('driver: kick follows the device event suppression structure, DESC mode across wraps', () => {
  const size = 5;
  const { mem, config, setDeviceEvent } = setup(size, { eventIdx: true });
  const drv = new PackedDriverQueue<number>(mem, config, 'q');
  const dev = new PackedDeviceQueue(mem, config, 'q');
  const addAndKick = (n: number): boolean => {
    for (let i = 0; i < n; i++) assert.equal(drv.add([{ addr: DATA, len: 4 }], [], i), true);
    const kick = drv.kick();
    for (let c = dev.pop(); c !== null; c = dev.pop()) dev.push(c, 0);
    dev.publish();
    while (drv.getUsed() !== null);
    return kick;
  };
  assert.equal(drv.kick(), false, 'nothing added');
  setDeviceEvent(RingEventFlags.DISABLE);
  assert.equal(addAndKick(2), false);
  setDeviceEvent(RingEventFlags.ENABLE);
  assert.equal(addAndKick(1), true);
  // Avail position 3 of lap 0. Adding 3 passes 3, 4 (wrap 1) and 0 (wrap 0).
  setDeviceEvent(RingEventFlags.DESC, 1, 0);
  assert.equal(addAndKick(3), false, 'event beyond the new descriptors');
  // Position 1 of lap 1 (wrap 0); adding 4 passes 1..4 (wrap 0).
  setDeviceEvent(RingEventFlags.DESC, 4, 0);
  assert.equal(addAndKick(4), true);
  // Position 0 of lap 2 (wrap 1): the device asks for position 0 of lap 2.
  assert.equal(dev.enableNotifications(), false);
  assert.equal(addAndKick(1), true, 'the device\'s own request');
  assert.equal(dev.enableNotifications(), false);
  dev.disableNotifications();
  assert.equal(addAndKick(1), false);
});

test('driver: a hostile device cannot make getUsed return a token twice or corrupt the queue', () => {
  const { mem, config, put, read } = setup(4);
  const drv = new PackedDriverQueue<string>(mem, config, 'q');
  drv.add([], [{ addr: DATA, len: 8 }], 'a');
  drv.add([], [{ addr: DATA, len: 8 }], 'b');
  drv.kick();
  assert.equal(drv.getUsed(), null, 'descriptors still as the driver wrote them');
  const garbage: [string, Desc][] = [
    ['used id not in flight', { addr: 0, len: 0, id: 4, flags: used(1) }],
    ['used id not in flight', { addr: 0, len: 0, id: 3, flags: used(1) }],
    ['bad used flags', { addr: 0, len: 0, id: 0, flags: USED }],
    ['bad used flags', { addr: 0, len: 0, id: 0, flags: 0 }],
    ['used length beyond buffer', { addr: 0, len: 9, id: 0, flags: used(1) | WRITE }],
  ];
  for (const [rule, desc] of garbage) {
    put(0, desc);
    assert.throws(() => drv.getUsed(), violates(rule), rule);
  }
  assert.equal(drv.freeDescriptors, 2, 'nothing was freed by the faults');
  put(0, { addr: 0, len: 9, id: 1, flags: used(1) });
  assert.deepEqual(drv.getUsed(), { token: 'b', len: 0 }, 'len without WRITE is reserved: 0');
  put(1, { addr: 0, len: 0, id: 1, flags: used(1) });
  assert.throws(() => drv.getUsed(), violates('used id not in flight'), 'the same id used twice');
  put(1, { addr: 0, len: 8, id: 0, flags: used(1) | WRITE });
  assert.deepEqual(drv.getUsed(), { token: 'a', len: 8 });
  assert.equal(drv.getUsed(), null);
  assert.equal(read(2).flags, 0, 'nothing in flight: the driver does not look');
});

test('driver IN_ORDER: a batched used descriptor returns every buffer up to its id', () => {
  const { mem, config } = setup(7, { inOrder: true });
  const drv = new PackedDriverQueue<string>(mem, config, 'q');
  const dev = new PackedDeviceQueue(mem, config, 'q');
  for (const t of ['a', 'b', 'c', 'd']) assert.equal(drv.add([], [{ addr: DATA + 0x100, len: 8 }], t), true);
  drv.kick();
  const chains = [0, 1, 2, 3].map(() => dev.pop()!);
  dev.push(chains[0], 8);
  dev.push(chains[1], 8);
  dev.push(chains[2], 5);
  dev.push(chains[3], 8);
  dev.publish();
  // getUsed() refills one object: copy each result before the next call.
  const next = () => {
    const used = drv.getUsed();
    return used && { ...used };
  };
  assert.deepEqual(
    [next(), next(), next(), next(), next()],
    [{ token: 'a', len: 8 }, { token: 'b', len: 8 }, { token: 'c', len: 5 }, { token: 'd', len: 8 }, null],
  );
  assert.equal(drv.freeDescriptors, 7);
});

test('driver: a slot the device wrote a used descriptor into is written whole for the next buffer there (§2.8, §2.8.4)', () => {
  for (const inOrder of [false, true]) {
    const { mem, config, read } = setup(4, { inOrder });
    const drv = new PackedDriverQueue<number>(mem, config, 'q');
    const dev = new PackedDeviceQueue(mem, config, 'q');
    const buffer = (i: number) => ({ addr: DATA + i * 0x100, len: 8 });
    for (let lap = 0; lap < 3; lap++) {
      for (let i = 0; i < 4; i++) assert.equal(drv.add([], [buffer(i)], i), true);
      drv.kick();
      const chains = [0, 1, 2, 3].map(() => dev.pop()!);
      // The device sees every buffer as the driver gave it, also where its used descriptor lay.
      assert.deepEqual(chains.map((c) => c.writable.map((w) => w.byteOffset - mem.slice(DATA, 1).byteOffset)), [[0], [0x100], [0x200], [0x300]], `lap ${lap}`);
      for (const c of chains) dev.push(c, 8);
      dev.publish();
      // A used descriptor is a whole descriptor: its address is unused (§2.8.4), so a device may
      // write anything there, and a length and id of its own.
      for (let i = 0; i < 4; i++) {
        if ((read(i).flags & USED) === (lap % 2 === 0 ? USED : 0)) {
          mem.writeU64(RING + 16 * i, 0xdead_beef_0000n + BigInt(i));
        }
      }
      const returned = [0, 1, 2, 3].map(() => drv.getUsed()?.token);
      assert.deepEqual(returned, [0, 1, 2, 3]);
    }
    for (let i = 0; i < 4; i++) assert.equal(drv.add([], [buffer(i)], i), true);
    drv.kick();
    for (let i = 0; i < 4; i++) {
      const d = read(i);
      assert.equal(d.addr, DATA + i * 0x100, `slot ${i} (IN_ORDER ${inOrder}): the driver's address`);
      assert.equal(d.len, 8);
    }
  }
});

test('driver: garbage a device wrote into a used descriptor is not left in the slot for the next buffer (§2.8)', () => {
  const { mem, config, put, read } = setup(2, { inOrder: true });
  const drv = new PackedDriverQueue<string>(mem, config, 'q');
  drv.add([], [{ addr: DATA, len: 8 }], 'a');
  drv.kick();
  // The device uses buffer 0 with a length of its own and garbage where the address was.
  put(0, { addr: 0xffff_ffff_ffff, len: 3, id: 0, flags: used(1) | WRITE });
  assert.deepEqual(drv.getUsed(), { token: 'a', len: 3 });
  drv.add([], [{ addr: DATA, len: 8 }], 'b');
  drv.add([], [{ addr: DATA, len: 8 }], 'c');
  drv.kick();
  // Slot 1 came first (the ring goes on from where it stood), then slot 0 in the next lap.
  assert.deepEqual(read(0), { addr: DATA, len: 8, id: read(0).id, flags: avail(0) | WRITE });
  assert.notEqual(read(0).id, read(1).id, 'two buffers in flight, two ids');
  assert.ok(read(0).id < 2 && read(1).id < 2);
});

test('driver: enableInterrupts asks for the next used descriptor and reports one already there', () => {
  for (const eventIdx of [false, true]) {
    const { mem, config, event } = setup(4, { eventIdx });
    const drv = new PackedDriverQueue<number>(mem, config, 'q');
    const dev = new PackedDeviceQueue(mem, config, 'q');
    drv.disableInterrupts();
    assert.equal(event(config.driver).flags, RingEventFlags.DISABLE);
    assert.equal(drv.enableInterrupts(), false, 'nothing in flight');
    drv.add([{ addr: DATA, len: 4 }], [], 1);
    drv.kick();
    assert.equal(drv.enableInterrupts(), false);
    assert.deepEqual(
      event(config.driver),
      eventIdx ? { flags: RingEventFlags.DESC, off: 0, wrap: 1 } : { flags: RingEventFlags.ENABLE, off: 0, wrap: 0 },
    );
    dev.push(dev.pop()!, 0);
    assert.equal(dev.publish(), true);
    assert.equal(drv.enableInterrupts(), true);
  }
});

test('both sides go round rings of 5, 7 and 256 entries lap after lap', () => {
  for (const size of [5, 7, 256]) {
    for (const inOrder of [false, true]) {
      const { mem, config } = setup(size, { inOrder });
      const drv = new PackedDriverQueue<number>(mem, config, 'q');
      const dev = new PackedDeviceQueue(mem, config, 'q');
      let next = 0;
      let received = 0;
      const held: ReturnType<typeof dev.pop>[] = [];
      while (received < size * 5) {
        // Chains of 1..3 descriptors, the id carried in the data.
        for (;;) {
          const n = 1 + (next % 3);
          const out = Array.from({ length: n }, (_, i) => ({ addr: DATA + ((next * 3 + i) % 1024) * 4, len: 4 }));
          mem.writeU32(out[0].addr, next);
          if (!drv.add(out, [], next)) break;
          next++;
        }
        drv.kick();
        for (let c = dev.pop(); c !== null; c = dev.pop()) held.push(c);
        // Out of order unless IN_ORDER: the newest first.
        while (held.length > 0) dev.push(inOrder ? held.shift()! : held.pop()!, 0);
        dev.publish();
        for (let u = drv.getUsed(); u !== null; u = drv.getUsed()) received++;
      }
      assert.equal(drv.freeDescriptors, size);
      assert.equal(dev.inFlight, 0);
    }
  }
});

test('driver: looking for used buffers before kick finds none, even where last lap\'s used descriptor lies', () => {
  const { mem, config } = setup(2);
  const drv = new PackedDriverQueue<number>(mem, config, 'q');
  const dev = new PackedDeviceQueue(mem, config, 'q');
  for (let lap = 0; lap < 3; lap++) {
    drv.add([{ addr: DATA, len: 1 }], [], 1);
    drv.add([{ addr: DATA, len: 1 }], [], 2);
    assert.equal(drv.getUsed(), null, `lap ${lap}: not kicked yet`);
    assert.equal(drv.enableInterrupts(), false);
    drv.kick();
    dev.push(dev.pop()!, 0);
    dev.push(dev.pop()!, 0);
    dev.publish();
    assert.equal(drv.getUsed()?.token, 1);
    assert.equal(drv.getUsed()?.token, 2);
  }
});

test('driver: a device cannot use a buffer added after the last kick', () => {
  const { mem, config, put } = setup(4);
  const drv = new PackedDriverQueue<string>(mem, config, 'q');
  drv.add([{ addr: DATA, len: 4 }], [], 'kicked');
  drv.kick();
  drv.add([{ addr: DATA, len: 4 }], [], 'not kicked');
  // The second buffer's descriptor (id 1) is in the ring already; a device reading ahead knows it.
  put(0, { addr: 0, len: 0, id: 1, flags: used(1) });
  assert.throws(() => drv.getUsed(), violates('used id not in flight'));
  drv.kick();
  assert.deepEqual(drv.getUsed(), { token: 'not kicked', len: 0 }, 'after kick the same answer is fine');
});

test('unpop gives the newest chains back unused: the avail position moves back, and its wrap counter over the ring\'s start (§2.8.1)', () => {
  for (const inOrder of [false, true]) {
    const { mem, config } = setup(5, { inOrder });
    const drv = new PackedDriverQueue<number>(mem, config, 'q');
    const dev = new PackedDeviceQueue(mem, config, 'q');
    // Three buffers used: the next avail position is slot 3 of the first lap.
    for (let t = 0; t < 3; t++) drv.add([{ addr: DATA, len: 4 }], [], t);
    drv.kick();
    for (let c = dev.pop(); c !== null; c = dev.pop()) dev.push(c, 0);
    dev.publish();
    while (drv.getUsed() !== null);
    // A buffer at slot 3, then a chain over slots 4 and 0: its end lies in the second lap.
    drv.add([{ addr: DATA, len: 4 }], [], 10);
    drv.add([{ addr: DATA, len: 4 }], [{ addr: DATA + 64, len: 8 }], 11);
    drv.kick();
    const a = dev.pop()!;
    const b = dev.pop()!;
    assert.equal(b.ringDescriptors, 2);
    assert.equal(dev.base, base(1, 0, 3, 1));
    dev.unpop(b);
    assert.equal(dev.base, base(4, 1, 3, 1), 'back over the start of the ring, a lap back');
    assert.equal(dev.inFlight, 1);
    assert.throws(() => dev.unpop(b), RangeError, 'a chain given back is not in flight');
    // What the ring says at base is what a device resuming from it finds.
    const resumed = new PackedDeviceQueue(mem, config, 'q', dev.base);
    assert.equal(resumed.pop()?.writableLength, 8);
    dev.unpop(a);
    assert.equal(dev.base, base(3, 1, 3, 1));
    assert.equal(dev.inFlight, 0);
    // Popped again, used once each.
    const a2 = dev.pop()!;
    const b2 = dev.pop()!;
    assert.deepEqual([a2.ringDescriptors, b2.writableLength], [1, 8]);
    dev.push(a2, 0);
    dev.push(b2, 8);
    dev.publish();
    const tokens: number[] = [];
    for (let u = drv.getUsed(); u !== null; u = drv.getUsed()) tokens.push(u.token);
    assert.deepEqual(tokens, [10, 11]);
    assert.equal(drv.freeDescriptors, 5);
  }
});

test('unresubmit gives a resubmitted chain back: the avail position stays past it', () => {
  const { mem, config, put } = setup(5);
  put(0, { addr: DATA, len: 8, id: 3, flags: avail(1) | WRITE });
  // The chain at slot 0 was popped before a restart: avail at 1, used at 0.
  const dev = new PackedDeviceQueue(mem, config, 'q', base(1, 1, 0, 1));
  const saved = { id: 3, descriptors: [{ addr: DATA, len: 8, id: 3, flags: avail(1) | WRITE }] };
  const again = dev.resubmit(saved);
  dev.unresubmit(again);
  assert.equal(dev.inFlight, 0);
  assert.equal(dev.base, base(1, 1, 0, 1));
  const third = dev.resubmit(saved);
  dev.push(third, 8);
  dev.publish();
  assert.equal(dev.base, base(1, 1, 1, 1));
});

/** Drain spans into a list of [address in guest memory, length, first byte]. */
function drainAll(dev: PackedDeviceQueue, max = 64, goOn: (n: number) => boolean = () => true): { seen: number[][]; visited: number } {
  const seen: number[][] = [];
  const visited = dev.drainSpans((bytes, offset, length) => {
    seen.push([offset, length, bytes[offset]]);
    return goOn(seen.length);
  }, max);
  return { seen, visited };
}

test('drainSpans serves one-descriptor readable chains in place, returns them used with 0 bytes, and leaves any other chain to pop()', () => {
  const { mem, config, put, read } = setup(8);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  mem.slice(DATA, 0x30).set([...Array(0x30).keys()]);
  put(0, { addr: DATA, len: 16, id: 0, flags: avail(1) });
  put(1, { addr: DATA + 0x10, len: 8, id: 1, flags: avail(1) });
  put(3, { addr: DATA + 0x24, len: 4, id: 2, flags: avail(1) });
  put(2, { addr: DATA + 0x20, len: 4, id: 0, flags: avail(1) | NEXT }); // two descriptors: pop()'s
  put(4, { addr: DATA + 0x28, len: 4, id: 4, flags: avail(1) });
  assert.deepEqual(drainAll(dev), { seen: [[DATA, 16, 0], [DATA + 0x10, 8, 0x10]], visited: 2 });
  assert.equal(dev.inFlight, 0);
  assert.equal(drainAll(dev).visited, 0, 'stops before the chain of two descriptors');
  const chain = dev.pop();
  assert.equal(chain?.id, 2);
  assert.equal(chain.readableLength, 8);
  assert.deepEqual(drainAll(dev).seen, [[DATA + 0x28, 4, 0x28]]);
  assert.equal(read(0).flags, avail(1), 'nothing visible before publish');
  dev.push(chain, 0);
  assert.equal(dev.publish(), true);
  assert.deepEqual([0, 1, 2, 3].map((i) => { const d = read(i); return [d.id, d.len, d.flags]; }), [
    [0, 0, used(1)],
    [1, 0, used(1)],
    [4, 0, used(1)],
    [2, 0, used(1)],
  ]);
  assert.equal(read(4).flags, avail(1), 'chain 2 took two slots: the fifth is not a used descriptor');
  assert.equal(dev.base, base(5, 1, 5, 1));
});

test('drainSpans leaves writable and indirect descriptors to pop(), and stops at max', () => {
  const { mem, config, put, putIndirect } = setup(8, { indirect: true });
  const dev = new PackedDeviceQueue(mem, config, 'q');
  put(0, { addr: DATA, len: 8, id: 0, flags: avail(1) | WRITE });
  putIndirect(DATA + 0x100, 0, { addr: DATA + 0x200, len: 4, id: 0, flags: 0 });
  put(1, { addr: DATA + 0x100, len: 16, id: 1, flags: avail(1) | INDIRECT });
  for (let i = 2; i < 5; i++) put(i, { addr: DATA + 0x10 * i, len: 4, id: i, flags: avail(1) });
  assert.equal(drainAll(dev).visited, 0);
  assert.equal(dev.pop()?.writableLength, 8);
  assert.equal(drainAll(dev).visited, 0);
  assert.equal(dev.pop()?.readableLength, 4);
  assert.equal(drainAll(dev, 2).visited, 2);
  assert.equal(drainAll(dev, 2).visited, 1);
  assert.equal(drainAll(dev).visited, 0, 'slot 5 was never made available');
  assert.equal(dev.inFlight, 2, 'the two popped chains, not the drained ones');
});

test('drainSpans breaks the rules pop() does with the same errors, and changes nothing', () => {
  const cases: { name: string; rule: string; ring: (s: ReturnType<typeof setup>) => void }[] = [
    { name: 'id beyond the ring', rule: 'buffer id out of range', ring: ({ put }) => put(0, { addr: DATA, len: 4, id: 4, flags: avail(1) }) },
    { name: 'AVAIL and USED both set to the wrap counter', rule: 'bad avail flags', ring: ({ put }) => put(0, { addr: DATA, len: 4, id: 0, flags: used(1) }) },
    { name: 'buffer outside guest memory', rule: 'buffer outside guest memory', ring: ({ put }) => put(0, { addr: 0x1f000, len: 0x2000, id: 0, flags: avail(1) }) },
    {
      name: 'buffer above 2^53',
      rule: 'buffer outside guest memory',
      ring: ({ mem }) => {
        mem.writeU64(RING, 0xffff_ffff_ffff_f000n);
        mem.writeU32(RING + 8, 16);
        mem.writeU16(RING + 14, avail(1));
      },
    },
    // Checked in pop()'s order: the buffer before the id.
    { name: 'bad buffer and bad id', rule: 'buffer outside guest memory', ring: ({ put }) => put(0, { addr: 0x1f000, len: 0x2000, id: 9, flags: avail(1) }) },
  ];
  for (const c of cases) {
    for (const take of ['pop', 'drainSpans'] as const) {
      const s = setup(4);
      const dev = new PackedDeviceQueue(s.mem, s.config, 'q');
      c.ring(s);
      const before = s.mem.slice(RING, 4 * 16).slice();
      const run = take === 'pop' ? () => dev.pop() : () => drainAll(dev);
      assert.throws(run, violates(c.rule), `${c.name} (${take})`);
      assert.deepEqual(s.mem.slice(RING, 4 * 16), before, `${c.name}: the ring is untouched`);
      assert.equal(dev.base, PACKED_FRESH_BASE, `${c.name}: the position did not move`);
      assert.equal(dev.inFlight, 0);
    }
  }
});

test('drainSpans refuses a buffer id in flight and a ring overrun as pop() does', () => {
  const { mem, config, put } = setup(4);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  put(0, { addr: DATA, len: 4, id: 2, flags: avail(1) | WRITE });
  put(1, { addr: DATA, len: 4, id: 2, flags: avail(1) });
  const held = dev.pop();
  assert.ok(held);
  assert.throws(() => drainAll(dev), violates('buffer id in use'));
  assert.equal(dev.base, base(1, 1, 0, 1));
  dev.push(held, 0);
  dev.publish();
  assert.equal(drainAll(dev).visited, 1, 'once used, the id is free again');
  // The device holds every slot (a chain of four, popped), and the driver makes slot 1 available again.
  const s = setup(4);
  const full = new PackedDeviceQueue(s.mem, s.config, 'q');
  for (const i of [1, 2, 3]) s.put(i, { addr: DATA, len: 4, id: 0, flags: avail(1) | (i < 3 ? NEXT : 0) });
  s.put(0, { addr: DATA, len: 4, id: 0, flags: avail(1) | NEXT });
  assert.equal(full.pop()?.ringDescriptors, 4);
  s.put(0, { addr: DATA, len: 4, id: 1, flags: avail(0) });
  assert.throws(() => drainAll(full), violates('ring overrun'));
  assert.throws(() => full.pop(), violates('ring overrun'), 'as pop() says');
  assert.equal(full.inFlight, 1);
});

test('drainSpans stops after a visit that returns false, holding that chain, and makes nothing of it visible', () => {
  const { mem, config, put, read } = setup(4);
  const dev = new PackedDeviceQueue(mem, config, 'q');
  for (let i = 0; i < 3; i++) put(i, { addr: DATA + 0x10 * i, len: 4, id: i, flags: avail(1) });
  assert.equal(drainAll(dev, 64, (n) => n < 2).visited, 2);
  assert.equal(dev.inFlight, 1);
  assert.equal(dev.base, base(2, 1, 0, 1), 'the third chain is still available');
  dev.publish();
  assert.equal(read(0).flags, used(1));
  assert.equal(read(1).flags, avail(1), 'the chain held at the reset is not used');
});

test('drainSpans with IN_ORDER serves nothing while a popped chain is in flight, then one used descriptor covers the run (§2.8.8)', () => {
  const { mem, config, put, read } = setup(8, { inOrder: true });
  const dev = new PackedDeviceQueue(mem, config, 'q');
  for (let i = 0; i < 4; i++) put(i, { addr: DATA + 0x10 * i, len: 4, id: i, flags: avail(1) | (i === 0 ? WRITE : 0) });
  const first = dev.pop();
  assert.ok(first);
  assert.equal(drainAll(dev).visited, 0);
  dev.push(first, 4);
  assert.equal(drainAll(dev).visited, 3);
  assert.equal(dev.publish(), true);
  assert.deepEqual(read(0), { addr: DATA, len: 0, id: 3, flags: used(1) }, 'one used descriptor names the whole run');
  assert.equal(read(1).flags, avail(1), 'the run\'s other slots are skipped');
  assert.equal(dev.base, base(4, 1, 4, 1));
  put(4, { addr: DATA, len: 4, id: 4, flags: avail(1) | WRITE });
  const next = dev.pop();
  assert.ok(next);
  dev.push(next, 1);
  dev.publish();
  assert.deepEqual(read(4), { addr: DATA, len: 1, id: 4, flags: used(1) | WRITE }, 'pop and push stay in step after drained chains');
});

test('drainSpans and pop() share a ring with the driver lap after lap, wrap counters and all (§2.8.1)', () => {
  for (const size of [5, 7, 256]) {
    for (const inOrder of [false, true]) {
      const { mem, config } = setup(size, { inOrder });
      const drv = new PackedDriverQueue<number>(mem, config, 'q');
      const dev = new PackedDeviceQueue(mem, config, 'q');
      let next = 0;
      const sent: number[] = [];
      const spans: number[] = [];
      const popped: number[] = [];
      while (sent.length < size * 5) {
        // One descriptor, mostly; every third buffer two, for pop().
        for (;;) {
          const n = next % 3 === 2 ? 2 : 1;
          const out = Array.from({ length: n }, (_, i) => ({ addr: DATA + ((next * 2 + i) % 1024) * 4, len: 4 }));
          mem.writeU32(out[0].addr, next);
          if (!drv.add(out, [], next)) break;
          next++;
        }
        drv.kick();
        for (;;) {
          const n = dev.drainSpans((bytes, offset) => spans.push(new DataView(bytes.buffer, bytes.byteOffset).getUint32(offset, true)) > 0, size);
          const chain = dev.pop();
          if (chain !== null) {
            popped.push(new DataView(chain.readable[0].buffer, chain.readable[0].byteOffset).getUint32(0, true));
            dev.push(chain, 0);
          } else if (n === 0) break;
        }
        dev.publish();
        for (let u = drv.getUsed(); u !== null; u = drv.getUsed()) sent.push(u.token);
      }
      assert.deepEqual(sent, [...sent.keys()], `size ${size}${inOrder ? ' IN_ORDER' : ''}: every buffer back once, in order`);
      assert.ok(spans.every((t) => t % 3 !== 2) && popped.every((t) => t % 3 === 2), 'one-descriptor buffers as spans, the rest popped');
      assert.equal(drv.freeDescriptors, size);
      assert.equal(dev.inFlight, 0);
    }
  }
});
