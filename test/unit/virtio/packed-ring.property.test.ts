import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { type DescriptorChain, type QueueConfig, type Segment, VirtqueueError } from '../../../src/virtio/queue.ts';
import { PackedDeviceQueue, PackedDriverQueue } from '../../../src/virtio/packed-ring.ts';

const RING = 0;
const TABLES = 0x10000;
const DATA = 0x20000;
const SEGMENT = 64;
const SLOT = 4 * SEGMENT;
const MEMORY = 0x40000;

function queueConfig(size: number, eventIdx: boolean, indirect: boolean, inOrder: boolean): QueueConfig {
  return { size, desc: RING, driver: RING + 16 * size, device: RING + 16 * size + 4, eventIdx, indirect, inOrder };
}

interface Request {
  readonly out: readonly number[];
  readonly in: readonly number[];
}

/** The device's answer: written bytes derived from what it read, so the driver can check both directions. */
function answer(readable: Uint8Array, k: number): number {
  return readable.length > 0 ? readable[k % readable.length] ^ 0x5a : (k * 3 + 1) & 0xff;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return Uint8Array.from(parts.flatMap((p) => [...p]));
}

const COMBINATIONS = [false, true].flatMap((eventIdx) =>
  [false, true].flatMap((indirect) => [false, true].map((inOrder) => ({ eventIdx, indirect, inOrder }))),
);

const requestArb = fc
  .record({
    out: fc.array(fc.integer({ min: 0, max: SEGMENT }), { maxLength: 2 }),
    in: fc.array(fc.integer({ min: 0, max: SEGMENT }), { maxLength: 2 }),
  })
  .filter((r) => r.out.length + r.in.length > 0);

for (const { eventIdx, indirect, inOrder } of COMBINATIONS) {
  test(`driver and device agree on random traffic (eventIdx=${eventIdx} indirect=${indirect} inOrder=${inOrder}), no notification lost`, () => {
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 3, 5, 7, 16),
        fc.array(requestArb, { minLength: 1, maxLength: 40 }),
        fc.array(fc.nat({ max: 1000 }), { maxLength: 300 }),
        (size, requests, schedule) => traffic(size, requests, schedule, eventIdx, indirect, inOrder),
      ),
      { numRuns: 40 },
    );
  });
}

/**
 * One driver and one device over a shared ring, interleaved by `schedule`. Each side sleeps when
 * it runs out of work, after asking for a notification, and only a notification wakes it, so a
 * lost notification shows as both asleep with work pending. Afterwards everything must complete.
 */
function traffic(
  size: number,
  requests: readonly Request[],
  schedule: readonly number[],
  eventIdx: boolean,
  indirect: boolean,
  inOrder: boolean,
): void {
  const mem = GuestMemory.allocate(MEMORY);
  const config = queueConfig(size, eventIdx, indirect, inOrder);
  const tables = size >= 2 ? { addr: TABLES, maxSegments: Math.min(size, 4) } : undefined;
  const drv = new PackedDriverQueue<number>(mem, config, 'q', { indirectTables: tables });
  let dev = new PackedDeviceQueue(mem, config, 'q');
  // Buffers of more segments than the ring has descriptors can never be added: trim them.
  const reqs = requests.map((r) => {
    const n = Math.min(r.out.length + r.in.length, size);
    return { out: r.out.slice(0, n), in: r.in.slice(0, Math.max(0, n - r.out.length)) };
  });

  const freeSlots = Array.from({ length: size }, (_, i) => i);
  const slotOf = new Map<number, number>();
  const done = new Set<number>();
  let nextRequest = 0;
  // Each side is awake (working), idle (found nothing, about to ask for notifications) or asleep
  // (only a notification wakes it). Idle is a separate step so that the other side can act
  // between "found nothing" and "asked to be notified": the race enable*() must catch.
  type State = 'awake' | 'idle' | 'asleep';
  let device: State = 'asleep';
  let deviceNotified = false;
  let driver: State = 'awake';
  let driverNotified = false;
  const held: DescriptorChain[] = [];
  let popped = 0;

  const segments = (r: number, slot: number): [Segment[], Segment[]] => {
    const base = DATA + slot * SLOT;
    const out = reqs[r].out.map((len, i) => ({ addr: base + i * SEGMENT, len }));
    const inSegs = reqs[r].in.map((len, i) => ({ addr: base + (reqs[r].out.length + i) * SEGMENT, len }));
    return [out, inSegs];
  };

  const submit = (max: number): boolean => {
    let added = 0;
    while (added < max && nextRequest < reqs.length && freeSlots.length > 0) {
      const r = nextRequest;
      const slot = freeSlots[freeSlots.length - 1];
      const [out, inSegs] = segments(r, slot);
      out.forEach((s, i) => mem.slice(s.addr, s.len).forEach((_, j, a) => (a[j] = (r * 13 + i * 5 + j) & 0xff)));
      for (const s of inSegs) mem.slice(s.addr, s.len).fill(0xee);
      if (!drv.add(out, inSegs, r)) break;
      freeSlots.pop();
      slotOf.set(r, slot);
      nextRequest++;
      added++;
    }
    if (drv.kick()) deviceNotified = true;
    return added > 0;
  };

  /** One step of the device's loop; false when it is asleep and not notified. */
  const devicePoll = (): boolean => {
    switch (device) {
      case 'asleep':
        if (!deviceNotified) return false;
        deviceNotified = false;
        dev.disableNotifications();
        device = 'awake';
        return true;
      case 'awake': {
        const chain = dev.pop();
        if (chain === null) device = 'idle';
        else {
          held.push(chain);
          popped++;
        }
        return true;
      }
      case 'idle':
        if (dev.enableNotifications()) {
          dev.disableNotifications();
          device = 'awake';
        } else device = 'asleep';
        return true;
    }
  };

  const deviceComplete = (pick: number, writeAll: boolean): boolean => {
    if (held.length === 0) return false;
    const chain = held.splice(inOrder ? 0 : pick % held.length, 1)[0];
    const readable = concat(chain.readable);
    const written = writeAll ? chain.writableLength : pick % (chain.writableLength + 1);
    let k = 0;
    for (const seg of chain.writable) {
      for (let j = 0; j < seg.length && k < written; j++) seg[j] = answer(readable, k++);
    }
    dev.push(chain, written);
    return true;
  };

  const devicePublish = (): void => {
    if (dev.publish()) driverNotified = true;
  };

  /** One step of the driver's used-buffer loop; false when it is asleep and not notified. */
  const driverReap = (): boolean => {
    switch (driver) {
      case 'asleep':
        if (!driverNotified) return false;
        driverNotified = false;
        drv.disableInterrupts();
        driver = 'awake';
        return true;
      case 'idle':
        if (drv.enableInterrupts()) {
          drv.disableInterrupts();
          driver = 'awake';
        } else driver = 'asleep';
        return true;
      case 'awake':
        break;
    }
    const used = drv.getUsed();
    if (used === null) {
      driver = 'idle';
      return true;
    }
    const r = used.token;
    assert.ok(!done.has(r), `request ${r} returned twice`);
    assert.ok(slotOf.has(r), `request ${r} was never added`);
    done.add(r);
    const [out, inSegs] = segments(r, slotOf.get(r)!);
    const readable = concat(out.map((s) => mem.slice(s.addr, s.len)));
    const writable = concat(inSegs.map((s) => mem.slice(s.addr, s.len)));
    assert.ok(used.len <= writable.length, `request ${r}: len ${used.len} beyond ${writable.length}`);
    const expected = writable.map((_, k) => (k < used.len ? answer(readable, k) : 0xee));
    assert.deepEqual(writable, expected, `request ${r}: the device's answer`);
    freeSlots.push(slotOf.get(r)!);
    slotOf.delete(r);
    return true;
  };

  for (const op of schedule) {
    switch (op % 6) {
      case 0:
        submit(1 + (op % 4));
        break;
      case 1:
        devicePoll();
        break;
      case 2:
        deviceComplete(op, op % 3 !== 0);
        break;
      case 3:
        devicePublish();
        break;
      case 4:
        driverReap();
        break;
      default:
        // Save and restore the device side: publish, then resume a new queue from the ring base.
        devicePublish();
        dev = new PackedDeviceQueue(mem, config, 'q', dev.base);
        break;
    }
  }

  // Drain, one step of each side in turn: a side acts only when awake or notified, so rounds
  // with no progress beyond the few steps it takes to fall asleep mean a lost notification.
  let quiet = 0;
  while (done.size < reqs.length) {
    const before = [nextRequest, popped, done.size].join();
    submit(size);
    devicePoll();
    deviceComplete(0, false);
    devicePublish();
    driverReap();
    quiet = [nextRequest, popped, done.size].join() === before ? quiet + 1 : 0;
    assert.ok(quiet < 8, `stalled with ${reqs.length - done.size} requests pending`);
  }
  assert.equal(drv.freeDescriptors, size);
  assert.equal(drv.getUsed(), null);
}

const descriptorArb = (size: number) =>
  fc.record({
    addr: fc.oneof(fc.integer({ min: 0, max: MEMORY + 64 }), fc.constant(2 ** 53 - 8), fc.nat()),
    len: fc.oneof(fc.integer({ min: 0, max: 80 }), fc.nat()),
    id: fc.oneof(fc.integer({ min: 0, max: size + 1 }), fc.integer({ min: 0, max: 0xffff })),
    // Mostly flag combinations a ring holds, some of them anything at all.
    flags: fc.oneof(
      fc.constantFrom(0, 1, 2, 3, 4, 5, 6).chain((low) =>
        fc.constantFrom(0, 0x80, 0x8000, 0x8080).map((wrapBits) => low | wrapBits),
      ),
      fc.integer({ min: 0, max: 0xffff }),
    ),
  });

function writeDescriptor(mem: GuestMemory, at: number, d: { addr: number; len: number; id: number; flags: number }): void {
  mem.writeU64(at, BigInt(d.addr));
  mem.writeU32(at + 8, d.len);
  mem.writeU16(at + 12, d.id);
  mem.writeU16(at + 14, d.flags);
}

test('garbage in the ring: pop() only ever throws VirtqueueError and always returns', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 9 }).chain((size) =>
        fc.record({
          size: fc.constant(size),
          ring: fc.array(descriptorArb(size), { minLength: size, maxLength: size }),
          table: fc.array(descriptorArb(size), { maxLength: 12 }),
          base: fc.nat({ max: 0xffff_ffff }),
          driverEvent: fc.nat({ max: 0xffff_ffff }),
          features: fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean(), inOrder: fc.boolean() }),
          pushes: fc.array(fc.nat(), { maxLength: 20 }),
        }),
      ),
      ({ size, ring, table, base, driverEvent, features, pushes }) => {
        const mem = GuestMemory.allocate(MEMORY);
        const config = queueConfig(size, features.eventIdx, features.indirect, features.inOrder);
        ring.forEach((d, i) => writeDescriptor(mem, RING + 16 * i, d));
        // Indirect descriptors in the garbage sometimes point at a table of more garbage.
        table.forEach((d, i) => writeDescriptor(mem, TABLES + 16 * i, d));
        mem.writeU32(config.driver, driverEvent);
        let dev: PackedDeviceQueue;
        try {
          dev = new PackedDeviceQueue(mem, config, 'q', base);
        } catch (e) {
          assert.ok(e instanceof VirtqueueError, String(e));
          dev = new PackedDeviceQueue(mem, config, 'q');
        }
        const popped: DescriptorChain[] = [];
        // Each pop() walks at most `size` descriptors and `size` table entries, so a bounded
        // number of calls is a bounded amount of work: returning at all is the property.
        for (let i = 0; i < 3 * size + 2; i++) {
          let chain: DescriptorChain | null;
          try {
            chain = dev.pop();
          } catch (e) {
            assert.ok(e instanceof VirtqueueError, String(e));
            break;
          }
          if (chain === null) {
            dev.enableNotifications();
            break;
          }
          for (const b of [...chain.readable, ...chain.writable]) assert.ok(b.byteOffset + b.length <= MEMORY);
          popped.push(chain);
          if (pushes[i] !== undefined && pushes[i] % 2 === 0) {
            dev.push(popped.shift()!, 0);
            dev.publish();
          }
        }
        assert.ok(dev.inFlight <= size);
      },
    ),
    { numRuns: 300 },
  );
});

test('garbage from the device: getUsed() only ever throws VirtqueueError and never repeats a token', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 9 }).chain((size) =>
        fc.record({
          size: fc.constant(size),
          adds: fc.integer({ min: 1, max: size }),
          inOrder: fc.boolean(),
          ring: fc.array(descriptorArb(size), { minLength: size, maxLength: size }),
          overwrite: fc.array(fc.boolean(), { minLength: size, maxLength: size }),
        }),
      ),
      ({ size, adds, inOrder, ring, overwrite }) => {
        const mem = GuestMemory.allocate(MEMORY);
        const drv = new PackedDriverQueue<number>(mem, queueConfig(size, true, false, inOrder), 'q');
        for (let t = 0; t < adds; t++) assert.ok(drv.add([], [{ addr: DATA + t * SEGMENT, len: SEGMENT }], t));
        drv.kick();
        ring.forEach((d, i) => {
          if (overwrite[i]) writeDescriptor(mem, RING + 16 * i, d);
        });
        const seen = new Set<number>();
        for (let i = 0; i < 2 * size + 2; i++) {
          let used;
          try {
            used = drv.getUsed();
          } catch (e) {
            assert.ok(e instanceof VirtqueueError, String(e));
            break;
          }
          if (used === null) break;
          assert.ok(used.token >= 0 && used.token < adds, `token ${used.token} was never added`);
          assert.ok(!seen.has(used.token), `token ${used.token} twice`);
          assert.ok(used.len <= SEGMENT);
          seen.add(used.token);
        }
        assert.equal(drv.freeDescriptors, size - adds + seen.size);
      },
    ),
    { numRuns: 300 },
  );
});
