/**
 * Properties of the split ring: random request mixes through both sides under every feature
 * combination, checked against a model; and random garbage in the rings, which may only ever
 * produce VirtqueueError.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { VirtqueueError, type DescriptorChain, type Segment } from '../../../src/virtio/queue.ts';
import { SplitDeviceQueue, SplitDriverQueue } from '../../../src/virtio/split-ring.ts';
import { DATA, RawRing, concat, type Features } from './split-ring-fixture.ts';

const TABLES = 0x20000;
const MAX_SEGMENTS = 4;
const SLOT_BYTES = 2 * MAX_SEGMENTS * 32;

type Op =
  | { kind: 'add'; out: number[]; in: number[] }
  | { kind: 'kick' }
  | { kind: 'pop'; count: number }
  | { kind: 'push'; count: number; pick: number; fraction: number }
  | { kind: 'publish' }
  | { kind: 'getUsed'; count: number }
  | { kind: 'deviceNotify'; enable: boolean }
  | { kind: 'driverInterrupt'; enable: boolean };

const lengths = fc.array(fc.integer({ min: 0, max: 32 }), { maxLength: MAX_SEGMENTS });
const op: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('add' as const), out: lengths, in: lengths }), weight: 4 },
  fc.constant({ kind: 'kick' as const }),
  { arbitrary: fc.record({ kind: fc.constant('pop' as const), count: fc.integer({ min: 1, max: 8 }) }), weight: 2 },
  {
    arbitrary: fc.record({
      kind: fc.constant('push' as const),
      count: fc.integer({ min: 1, max: 8 }),
      pick: fc.nat(),
      fraction: fc.double({ min: 0, max: 1, noNaN: true }),
    }),
    weight: 2,
  },
  fc.constant({ kind: 'publish' as const }),
  { arbitrary: fc.record({ kind: fc.constant('getUsed' as const), count: fc.integer({ min: 1, max: 8 }) }), weight: 2 },
  fc.record({ kind: fc.constant('deviceNotify' as const), enable: fc.boolean() }),
  fc.record({ kind: fc.constant('driverInterrupt' as const), enable: fc.boolean() }),
);

interface Request {
  readonly id: number;
  readonly slot: number;
  readonly out: Uint8Array;
  readonly inSegs: Segment[];
  readonly inLength: number;
  readonly descriptors: number;
  written: number;
}

/** The device's bytes for a request: what the driver must find in its writable part. */
function reply(id: number, length: number): Uint8Array {
  return Uint8Array.from({ length }, (_, k) => (id * 13 + k * 5 + 1) & 0xff);
}

/** Run `ops` through a driver and a device sharing one ring, checking each step against the model. */
function runMix(size: number, features: Required<Features>, ops: readonly Op[]): void {
  const ring = new RawRing(size, features);
  const indirectTables = features.indirect ? { addr: TABLES, maxSegments: MAX_SEGMENTS } : undefined;
  const drv = new SplitDriverQueue<number>(ring.memory, ring.config, 'vq', { indirectTables });
  const dev = new SplitDeviceQueue(ring.memory, ring.config, 'vq');

  const freeSlots = Array.from({ length: size }, (_, i) => i);
  const requests = new Map<number, Request>();
  let nextId = 0;
  let free = size;
  let added: number[] = []; // added, not yet kicked
  const available: number[] = []; // kicked, not yet popped
  const popped: { chain: DescriptorChain; id: number }[] = [];
  let pushed: number[] = []; // pushed, not yet published
  const used: number[] = []; // published, not yet collected
  // A side is "armed" when it asked for a notification and found nothing to do: the next
  // kick / publish that gives it work must notify it.
  let deviceArmed = false;
  let driverArmed = false;

  const add = (outLens: number[], inLens: number[]): void => {
    const n = outLens.length + inLens.length;
    if (n === 0) return;
    const descriptors = features.indirect && n > 1 && n <= Math.min(MAX_SEGMENTS, size) ? 1 : n;
    const id = nextId;
    if (descriptors > size) {
      assert.throws(() => drv.add([], new Array<Segment>(n).fill({ addr: DATA, len: 1 }), id), RangeError);
      return;
    }
    // With every slot in flight the ring is full too; the spare slot `size` serves the add that fails.
    const slot = freeSlots.length > 0 ? freeSlots[freeSlots.length - 1] : size;
    let at = DATA + slot * SLOT_BYTES;
    const place = (len: number): Segment => {
      const seg = { addr: at, len };
      at += len;
      return seg;
    };
    const outSegs = outLens.map(place);
    const inSegs = inLens.map(place);
    const out = ring.fill(outSegs[0]?.addr ?? DATA, outLens.reduce((a, b) => a + b, 0), id);
    const ok = drv.add(outSegs, inSegs, id);
    assert.equal(ok, free >= descriptors, 'add succeeds exactly when descriptors are free');
    if (!ok) return;
    freeSlots.pop();
    nextId++;
    free -= descriptors;
    const inLength = inLens.reduce((a, b) => a + b, 0);
    requests.set(id, { id, slot, out, inSegs, inLength, descriptors, written: 0 });
    added.push(id);
  };

  const step = (o: Op): void => {
    switch (o.kind) {
      case 'add':
        add(o.out, o.in);
        break;
      case 'kick': {
        const notify = drv.kick();
        if (deviceArmed && added.length > 0) assert.equal(notify, true, 'kick must notify an armed device');
        if (notify) deviceArmed = false;
        available.push(...added);
        added = [];
        break;
      }
      case 'pop':
        for (let k = 0; k < o.count; k++) {
          const chain = dev.pop();
          deviceArmed = false;
          const id = available.shift();
          if (id === undefined) {
            assert.equal(chain, null);
            break;
          }
          assert.ok(chain, 'an available buffer pops');
          const req = requests.get(id)!;
          assert.deepEqual(concat(chain.readable), req.out);
          assert.equal(chain.writableLength, req.inLength);
          assert.equal(chain.ringDescriptors, req.descriptors);
          popped.push({ chain, id });
        }
        break;
      case 'push':
        for (let k = 0; k < o.count && popped.length > 0; k++) {
          const at = features.inOrder ? 0 : o.pick % popped.length;
          const [{ chain, id }] = popped.splice(at, 1);
          const written = Math.floor(o.fraction * chain.writableLength);
          const bytes = reply(id, written);
          let done = 0;
          for (const w of chain.writable) {
            const n = Math.min(w.length, written - done);
            w.set(bytes.subarray(done, done + n));
            done += n;
          }
          dev.push(chain, written);
          requests.get(id)!.written = written;
          pushed.push(id);
        }
        break;
      case 'publish': {
        const notify = dev.publish();
        if (driverArmed && pushed.length > 0) assert.equal(notify, true, 'publish must interrupt an armed driver');
        if (notify) driverArmed = false;
        used.push(...pushed);
        pushed = [];
        break;
      }
      case 'getUsed':
        for (let k = 0; k < o.count; k++) {
          const got = drv.getUsed();
          driverArmed = false;
          const id = used.shift();
          if (id === undefined) {
            assert.equal(got, null);
            break;
          }
          const req = requests.get(id)!;
          assert.deepEqual(got, { token: id, len: req.written });
          const inBytes = concat(req.inSegs.map((s) => ring.memory.slice(s.addr, s.len)));
          assert.deepEqual(inBytes.subarray(0, req.written), reply(id, req.written));
          requests.delete(id);
          freeSlots.push(req.slot);
          free += req.descriptors;
        }
        break;
      case 'deviceNotify':
        if (o.enable) {
          const pending = dev.enableNotifications();
          assert.equal(pending, available.length > 0, 'enableNotifications reports unpopped buffers');
          deviceArmed = !pending;
        } else {
          dev.disableNotifications();
          deviceArmed = false;
        }
        break;
      case 'driverInterrupt':
        if (o.enable) {
          const pending = drv.enableInterrupts();
          assert.equal(pending, used.length > 0, 'enableInterrupts reports uncollected buffers');
          driverArmed = !pending;
        } else {
          drv.disableInterrupts();
          driverArmed = false;
        }
        break;
    }
    assert.equal(drv.freeDescriptors, free);
    assert.equal(dev.inFlight, popped.length);
  };

  for (const o of ops) step(o);
  // Drain: every request completes, every descriptor comes back.
  step({ kind: 'kick' });
  step({ kind: 'pop', count: size + 1 });
  step({ kind: 'push', count: size, pick: 0, fraction: 1 });
  step({ kind: 'publish' });
  step({ kind: 'getUsed', count: size + 1 });
  assert.equal(requests.size, 0);
  assert.equal(drv.freeDescriptors, size);
}

const sizes = fc.constantFrom(1, 2, 4, 8, 16);

for (const eventIdx of [false, true]) {
  for (const indirect of [false, true]) {
    for (const inOrder of [false, true]) {
      const name = `eventIdx=${eventIdx} indirect=${indirect} inOrder=${inOrder}`;
      test(`property: random request mixes keep data intact and lose no notification (${name})`, () => {
        fc.assert(
          fc.property(sizes, fc.array(op, { maxLength: 150 }), (size, ops) =>
            runMix(size, { eventIdx, indirect, inOrder }, ops),
          ),
          { numRuns: 60 },
        );
      });
    }
  }
}

const u16 = fc.integer({ min: 0, max: 0xffff });
/** Descriptors that are mostly plausible, so garbage reaches the deeper checks too. */
const descriptor = fc.record({
  addr: fc.oneof(fc.integer({ min: 0, max: 0x80000 }), fc.constantFrom(DATA, TABLES), fc.nat().map((n) => n * 0x1_0000)),
  len: fc.oneof(fc.integer({ min: 0, max: 256 }), fc.constantFrom(16, 32, 48), fc.nat()),
  flags: fc.oneof(fc.integer({ min: 0, max: 7 }), u16),
  next: fc.oneof(fc.integer({ min: 0, max: 17 }), u16),
});

test('property: garbage in the descriptor table and available ring only ever raises VirtqueueError', () => {
  fc.assert(
    fc.property(
      sizes,
      fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean(), inOrder: fc.boolean() }),
      fc.array(descriptor, { minLength: 16, maxLength: 16 }),
      fc.array(descriptor, { minLength: 16, maxLength: 16 }),
      fc.array(fc.oneof(fc.integer({ min: 0, max: 17 }), u16), { minLength: 16, maxLength: 16 }),
      fc.oneof(fc.integer({ min: 0, max: 18 }), u16),
      fc.double({ min: 0, max: 1, noNaN: true }),
      (size, features, table, indirectTable, heads, availIdx, fraction) => {
        const ring = new RawRing(size, features);
        const dev = new SplitDeviceQueue(ring.memory, ring.config, 'vq');
        for (let i = 0; i < size; i++) {
          const d = table[i];
          ring.writeDesc(i, d.addr, d.len, d.flags, d.next);
        }
        indirectTable.forEach((d, i) => ring.writeDesc(i, d.addr, d.len, d.flags, d.next, TABLES));
        ring.makeAvailable(heads.slice(0, size), 0);
        ring.availIdx = availIdx;
        // Each pop either yields a valid chain, finds nothing, or refuses; at most `size` succeed.
        for (let k = 0; k <= size; k++) {
          let chain: DescriptorChain | null;
          try {
            chain = dev.pop();
          } catch (e) {
            assert.ok(e instanceof VirtqueueError, `unexpected ${String(e)}`);
            return;
          }
          if (chain === null) return;
          for (const part of [...chain.readable, ...chain.writable]) {
            assert.ok(part.byteOffset + part.length <= ring.memory.layout[0].bytes.length);
          }
          dev.push(chain, Math.floor(fraction * chain.writableLength));
        }
        assert.fail('more chains popped than the ring holds');
      },
    ),
    { numRuns: 500 },
  );
});

test('property: garbage in the used ring only ever raises VirtqueueError, and no token returns twice', () => {
  fc.assert(
    fc.property(
      fc.constantFrom(1, 2, 4, 8),
      fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean(), inOrder: fc.boolean() }),
      fc.array(fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 3 }), { maxLength: 8 }),
      fc.array(fc.record({ id: fc.oneof(fc.integer({ min: 0, max: 9 }), fc.nat()), len: fc.nat() }), {
        minLength: 8,
        maxLength: 8,
      }),
      fc.oneof(fc.integer({ min: 0, max: 9 }), u16),
      (size, features, buffers, elems, usedIdx) => {
        const ring = new RawRing(size, features);
        const drv = new SplitDriverQueue<number>(ring.memory, ring.config, 'vq', {
          indirectTables: { addr: TABLES, maxSegments: Math.max(2, Math.min(size, 4)) },
        });
        const inFlight = new Set<number>();
        buffers.forEach((segs, token) => {
          if (segs.length > size) return;
          const ok = drv.add(
            segs.map((len) => ({ addr: DATA, len })),
            [],
            token,
          );
          if (ok) inFlight.add(token);
        });
        drv.kick();
        elems.forEach((e, i) => ring.writeUsedElem(i, e.id, e.len));
        ring.usedIdx = usedIdx;
        for (let k = 0; k <= size; k++) {
          try {
            const got = drv.getUsed();
            if (got === null) return;
            assert.ok(inFlight.delete(got.token), `token ${got.token} was not in flight`);
          } catch (e) {
            assert.ok(e instanceof VirtqueueError, `unexpected ${String(e)}`);
            return;
          }
        }
        assert.fail('more buffers collected than the ring holds');
      },
    ),
    { numRuns: 300 },
  );
});
