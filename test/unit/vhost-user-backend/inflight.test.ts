/**
 * The inflight region (vhost-user.rst "Inflight I/O tracking"): its layout, the record a split
 * ring keeps in it, recovery after a crash at any step, and records a hostile front-end wrote.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { pino } from 'pino';
import { InflightRegion, inflightQueueBytes, inflightShapeError } from '../../../src/transports/vhost-user/inflight.ts';
import type { SplitInflight } from '../../../src/transports/vhost-user/inflight-split.ts';
import { InflightQueue, type InflightRecord } from '../../../src/transports/vhost-user/inflight-queue.ts';
import { Feature, featureBit } from '../../../src/virtio/constants.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { PACKED_FRESH_BASE } from '../../../src/virtio/packed-ring.ts';
import type { DescriptorChain, DriverQueue, QueueConfig, ResubmittingQueue } from '../../../src/virtio/queue.ts';
import { createDeviceQueue, createDriverQueue, negotiatedQueueConfig, ringLayout } from '../../../src/virtio/ring.ts';
import { concat } from '../virtio/split-ring-fixture.ts';

const silent = pino({ level: 'silent' });
const ENTRIES = 16;

/** Ring 0's record in a fresh region of two rings, and the raw bytes of that ring's region. */
function record(entries = ENTRIES): { rec: SplitInflight; raw: DataView; region: InflightRegion; bytes: Uint8Array } {
  const bytes = new Uint8Array(InflightRegion.byteLength(2, entries));
  const region = new InflightRegion(bytes, 2, entries);
  return { rec: region.split(0, silent)!, raw: new DataView(bytes.buffer, 0, region.queueBytes), region, bytes };
}

/** The record of ring 0 as a restarted back-end sees it: a new object over the same bytes. */
const reopen = (region: InflightRegion): SplitInflight => region.split(0, silent)!;

const entry = (raw: DataView, head: number): { inflight: number; next: number; counter: bigint } => ({
  inflight: raw.getUint8(16 + 16 * head),
  next: raw.getUint16(16 + 16 * head + 6, true),
  counter: raw.getBigUint64(16 + 16 * head + 8, true),
});

test('layout: a 16-byte header and 16 bytes per entry, each ring on a 64-byte boundary', () => {
  assert.equal(inflightQueueBytes(1), 64);
  assert.equal(inflightQueueBytes(3), 64);
  assert.equal(inflightQueueBytes(4), 128);
  assert.equal(inflightQueueBytes(128), 2112);
  assert.equal(InflightRegion.byteLength(2, 128), 4224);
  assert.throws(() => new InflightRegion(new Uint8Array(100), 2, 4), RangeError);
  assert.equal(inflightShapeError(1, 128, 1), undefined);
  assert.match(inflightShapeError(2, 128, 1)!, /2 queues/);
  assert.match(inflightShapeError(0, 128, 1)!, /0 queues/);
  assert.match(inflightShapeError(1, 0, 1)!, /0 entries/);
  assert.match(inflightShapeError(1, 32769, 1)!, /32769 entries/);
  const { region } = record();
  assert.equal(region.split(2, silent), undefined, 'no record for a ring past the region');
});

test('a fresh region is initialised and resubmits nothing; the front-end base stands', () => {
  const { rec, raw } = record();
  assert.equal(rec.recover(8, 5), undefined);
  assert.equal(raw.getUint16(8, true), 1, 'version');
  assert.equal(raw.getUint16(10, true), ENTRIES, 'desc_num');
  assert.equal(raw.getUint16(14, true), 5, 'used_idx');
});

test('taking, returning and publishing follow the order of vhost-user.rst', () => {
  const { rec, raw } = record();
  rec.recover(8, 0);
  rec.taken({ id: 3 });
  rec.taken({ id: 5 });
  assert.deepEqual(entry(raw, 3), { inflight: 1, next: 0, counter: 1n });
  assert.deepEqual(entry(raw, 5), { inflight: 1, next: 0, counter: 2n });
  rec.returned({ id: 5 });
  rec.returned({ id: 3 });
  assert.equal(raw.getUint16(12, true), 3, 'last_batch_head is the last head returned');
  assert.equal(entry(raw, 3).next, 5, 'the batch is linked through next');
  assert.equal(entry(raw, 3).inflight, 1, 'still in flight until the used index moves');
  rec.published();
  assert.equal(entry(raw, 3).inflight, 0);
  assert.equal(entry(raw, 5).inflight, 0);
  assert.equal(raw.getUint16(14, true), 2, 'used_idx follows the used ring');
});

test('after a crash, heads still in flight come back oldest first, and the ring resumes past them', () => {
  const { rec, region } = record();
  rec.recover(8, 0);
  for (const h of [4, 1, 6, 2]) rec.taken({ id: h });
  rec.returned({ id: 1 });
  rec.published();
  // Crash here: 1 was published; 4, 6, 2 were taken and not returned.
  const after = reopen(region);
  assert.deepEqual(after.recover(8, 1), [4, 6, 2]);
  assert.equal(after.nextResubmit()?.id, 4);
  assert.equal(after.hasPending, true);
  assert.equal(after.nextResubmit()?.id, 6);
  assert.equal(after.nextResubmit()?.id, 2);
  assert.equal(after.nextResubmit()?.id, undefined);
  // New chains get counters after the recovered ones, so a second crash keeps the order.
  after.taken({ id: 7 });
  assert.deepEqual(reopen(region).recover(8, 1), [4, 6, 2, 7]);
});

test('a crash after the used index moved but before the record caught up: the batch is repaired', () => {
  const { rec, raw, region } = record();
  rec.recover(8, 0);
  for (const h of [0, 1, 2]) rec.taken({ id: h });
  rec.returned({ id: 2 });
  rec.returned({ id: 0 });
  // The device published used->idx = 2, then died before published().
  assert.deepEqual(reopen(region).recover(8, 2), [1]);
  assert.equal(raw.getUint16(14, true), 2, 'used_idx repaired');
  assert.equal(entry(raw, 0).inflight, 0);
  assert.equal(entry(raw, 2).inflight, 0);
});

test('a crash after returning but before the used index moved resubmits the returned chains', () => {
  const { rec, region } = record();
  rec.recover(8, 0);
  rec.taken({ id: 3 });
  rec.returned({ id: 3 });
  assert.deepEqual(reopen(region).recover(8, 0), [3]);
});

test('a batch longer than the ring (a head returned, made available and returned again) keeps the record intact', () => {
  const { rec, raw } = record(4);
  rec.recover(4, 0);
  for (let k = 0; k < 10; k++) {
    rec.taken({ id: 2 });
    rec.returned({ id: 2 });
  }
  rec.published();
  assert.equal(raw.getUint16(8, true), 1, 'version untouched');
  assert.equal(raw.getUint16(10, true), 4, 'desc_num untouched');
  assert.equal(raw.getUint16(14, true), 10, 'used_idx covers every buffer returned');
  assert.equal(entry(raw, 2).inflight, 0);
});

test('hostile records are dropped with a log line, never trusted or thrown', () => {
  const { rec, raw, region } = record();
  rec.recover(8, 0);
  const set = (head: number, flag: number, counter: bigint, next = 0): void => {
    raw.setUint8(16 + 16 * head, flag);
    raw.setUint16(16 + 16 * head + 6, next, true);
    raw.setBigUint64(16 + 16 * head + 8, counter, true);
  };
  set(0, 1, 0xffff_ffff_ffff_ffffn);
  set(1, 7, 1n); // not a flag this layout has
  set(9, 1, 2n); // beyond the ring's 8 entries
  set(2, 1, 5n);
  set(3, 1, 5n); // a duplicate counter: head order decides
  const heads = reopen(region).recover(8, 0);
  assert.deepEqual(heads, [2, 3, 0]);
  assert.equal(entry(raw, 1).inflight, 0, 'the garbled flag was cleared');
  assert.equal(entry(raw, 9).inflight, 0, 'the head past the ring was cleared');
  assert.deepEqual([2, 3, 0].map((h) => entry(raw, h).counter), [1n, 2n, 3n], 'counters no ring reaches are renumbered in order');

  // A batch link out of range stops the repair; a looping one is bounded by the region.
  raw.setUint16(12, 200, true);
  raw.setUint16(14, 0, true);
  assert.deepEqual(reopen(region).recover(8, 3), [2, 3, 0]);
  set(4, 1, 9n, 4);
  raw.setUint16(12, 4, true);
  raw.setUint16(14, 0, true);
  assert.deepEqual(reopen(region).recover(8, 60000), [2, 3, 0]);

  // An unknown version: every record is dropped and the region starts over.
  raw.setUint16(8, 0x7777, true);
  assert.equal(reopen(region).recover(8, 0), undefined);
  assert.equal(entry(raw, 2).inflight, 0);
  assert.equal(raw.getUint16(8, true), 1);
});

test('property: a crash at any step recovers exactly the heads not yet in the used ring, in the order taken', () => {
  type Op = { kind: 'take' } | { kind: 'return'; pick: number } | { kind: 'publish' };
  const op = fc.oneof(
    fc.constant<Op>({ kind: 'take' }),
    fc.nat().map<Op>((pick) => ({ kind: 'return', pick })),
    fc.constant<Op>({ kind: 'publish' }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), fc.boolean(), fc.nat(), (ops, diesInPublish, startUsed) => {
      const size = 8;
      const { rec, region } = record(size);
      const start = startUsed & 0xffff;
      rec.recover(size, start);
      let used = start;
      const free = Array.from({ length: size }, (_, h) => h);
      const held: number[] = [];
      let batch: number[] = [];
      for (const o of ops) {
        if (o.kind === 'take' && free.length > 0) {
          const h = free.shift()!;
          rec.taken({ id: h });
          held.push(h);
        } else if (o.kind === 'return' && held.length > 0) {
          const [h] = held.splice(o.pick % held.length, 1);
          rec.returned({ id: h });
          batch.push(h);
        } else if (o.kind === 'publish') {
          used = (used + batch.length) & 0xffff;
          rec.published();
          free.push(...batch);
          batch = [];
        }
      }
      // The crash: either before the used index covered the open batch, or just after.
      const usedAtCrash = diesInPublish ? (used + batch.length) & 0xffff : used;
      const expected = diesInPublish ? held : [...held, ...batch];
      const order = (hs: readonly number[]): number[] => [...hs].sort((a, b) => a - b);
      const heads = reopen(region).recover(size, usedAtCrash)!;
      assert.deepEqual(order(heads), order(expected));
      // Oldest first: the order they were taken in, which `held` keeps for never-returned heads.
      assert.deepEqual(heads.filter((h) => held.includes(h)), held.filter((h) => heads.includes(h)));
    }),
  );
});

/**
 * A driver and a device over one ring of `size` entries, the device behind an InflightQueue whose
 * record lives in `region`. The device can die at any point — between operations, or inside a
 * publish after the record prepared it or after the ring showed it — and a new one starts over
 * the same ring and region through InflightRegion.resume(), as a restarted back-end does.
 */
class CrashRig {
  readonly memory = GuestMemory.allocate(0x20000);
  readonly config: QueueConfig;
  readonly driver: DriverQueue<number>;
  readonly region: InflightRegion;
  private inner!: ResubmittingQueue;
  private record!: InflightRecord;
  device!: InflightQueue;
  added = 0;
  readonly used: number[] = [];

  constructor(
    readonly size: number,
    readonly packed: boolean,
    inOrder: boolean,
  ) {
    const layout = ringLayout(size, packed);
    this.config = negotiatedQueueConfig(
      (inOrder ? featureBit(Feature.IN_ORDER) : 0n) | (packed ? featureBit(Feature.RING_PACKED) : 0n),
      size,
      { desc: 0x1000, driver: 0x1000 + layout.desc.size + 64, device: 0x3000 },
    );
    this.driver = createDriverQueue<number>(this.memory, this.config, packed, 'driver');
    this.region = new InflightRegion(new Uint8Array(InflightRegion.byteLength(1, size, packed)), 1, size, packed);
    this.start(packed ? PACKED_FRESH_BASE : 0);
  }

  /** A device starts at the front-end's `base` (after a crash QEMU's base is stale for packed rings). */
  start(base: number): void {
    const resumed = this.region.resume(0, this.memory, this.config, this.packed, base, 'device', silent)!;
    this.inner = createDeviceQueue(this.memory, this.config, this.packed, 'device', resumed.base);
    this.record = resumed.record;
    this.device = new InflightQueue(this.inner, this.record);
  }

  /** Request k: 4 readable bytes holding k, then 4 writable ones, in a one- or two-descriptor chain. */
  add(twoSegments: boolean): void {
    const k = this.added;
    const at = 0x8000 + 16 * (k % 256);
    this.memory.writeU32(at, k);
    this.memory.writeU32(at + 8, 0xffff_ffff);
    const out = twoSegments ? [{ addr: at, len: 2 }, { addr: at + 2, len: 2 }] : [{ addr: at, len: 4 }];
    if (this.driver.add(out, [{ addr: at + 8, len: 4 }], k)) this.added++;
    this.driver.kick();
  }

  /** The device answers with the request's own number: a chain served from a wrong copy shows. */
  complete(chain: DescriptorChain): void {
    const number = concat(chain.readable);
    chain.writable[0].set(number.subarray(0, 4));
    this.device.push(chain, 4);
  }

  collect(): void {
    for (let u = this.driver.getUsed(); u !== null; u = this.driver.getUsed()) {
      assert.equal(this.memory.readU32(0x8000 + 16 * (u.token % 256) + 8), u.token, `request ${u.token} answered from its own buffers`);
      this.used.push(u.token);
    }
  }

  /** Die inside a publish: after the record prepared it (0), or after the ring showed it (1). */
  dieInPublish(stage: number): void {
    this.record.publishing();
    if (stage === 1) this.inner.publish();
  }
}

for (const packed of [false, true]) {
  const layout = packed ? 'packed' : 'split';
  test(`property (${layout}): through a crash of the device at any point, chains given back unused among them, every buffer the driver made available is used exactly once`, () => {
    type Op = { kind: 'add'; two: boolean } | { kind: 'pop' } | { kind: 'unpop' } | { kind: 'push'; pick: number } | { kind: 'publish' } | { kind: 'collect' };
    const op = fc.oneof(
      fc.boolean().map<Op>((two) => ({ kind: 'add', two })),
      fc.constant<Op>({ kind: 'pop' }),
      fc.constant<Op>({ kind: 'unpop' }),
      fc.nat().map<Op>((pick) => ({ kind: 'push', pick })),
      fc.constant<Op>({ kind: 'publish' }),
      fc.constant<Op>({ kind: 'collect' }),
    );
    fc.assert(
      fc.property(
        fc.array(fc.array(op, { maxLength: 60 }), { minLength: 1, maxLength: 3 }),
        fc.boolean(),
        fc.constantFrom(-1, 0, 1),
        fc.constantFrom(...(packed ? [3, 5, 8] : [4, 8])),
        (lives, inOrder, publishStage, size) => {
          const rig = new CrashRig(size, packed, inOrder);
          for (const ops of lives) {
            const held: DescriptorChain[] = [];
            // Pops not given back, newest last: only the newest, while not pushed, may go back unused.
            const popped: DescriptorChain[] = [];
            const pushed = new Set<DescriptorChain>();
            for (const o of ops) {
              if (o.kind === 'add') rig.add(o.two);
              else if (o.kind === 'pop') {
                const c = rig.device.pop();
                if (c !== null) held.push(c);
                if (c !== null) popped.push(c);
              } else if (o.kind === 'unpop' && popped.length > 0 && !pushed.has(popped[popped.length - 1])) {
                const c = popped.pop()!;
                held.splice(held.indexOf(c), 1);
                rig.device.unpop(c);
              } else if (o.kind === 'push' && held.length > 0) {
                // IN_ORDER devices return buffers in the order they took them (§2.7.9, §2.8.8).
                const c = held.splice(inOrder ? 0 : o.pick % held.length, 1)[0];
                pushed.add(c);
                rig.complete(c);
              } else if (o.kind === 'publish') rig.device.publish();
              else if (o.kind === 'collect') rig.collect();
            }
            if (publishStage >= 0) rig.dieInPublish(publishStage);
            // The device dies; QEMU sends a stale position (the fresh one) to its successor.
            rig.start(packed ? PACKED_FRESH_BASE : rig.used.length & 0xffff);
          }
          // The last device serves everything still owed, and the driver collects it all.
          const held: DescriptorChain[] = [];
          for (let c = rig.device.pop(); c !== null; c = rig.device.pop()) held.push(c);
          for (const c of held) rig.complete(c);
          rig.device.publish();
          rig.collect();
          assert.deepEqual([...rig.used].sort((a, b) => a - b), Array.from({ length: rig.added }, (_, i) => i));
        },
      ),
      { numRuns: 300 },
    );
  });
}

test('packed: hostile records are dropped with a log line, never trusted or thrown', () => {
  const bytes = new Uint8Array(InflightRegion.byteLength(1, 8, true));
  const region = new InflightRegion(bytes, 1, 8, true);
  const raw = new DataView(bytes.buffer);
  const neverUsed = (): boolean => false;
  assert.equal(region.packedRecord(0, silent)!.recover(8, PACKED_FRESH_BASE, neverUsed), undefined, 'a fresh region');
  assert.equal(raw.getUint16(8, true), 1, 'version');
  assert.equal(raw.getUint8(20), 1, 'used wrap counter of the fresh position');
  const entry = (e: number, inflight: number, num: number, next: number, id = 0): void => {
    const at = 32 + 32 * e;
    raw.setUint8(at, inflight);
    raw.setUint16(at + 2, next, true);
    raw.setUint16(at + 6, num, true);
    raw.setUint16(at + 16, id, true);
    raw.setUint32(at + 20, 4, true);
    raw.setBigUint64(at + 24, 0x100n, true);
  };
  entry(0, 1, 0, 0); // a chain of no descriptors
  entry(1, 7, 1, 0); // not a flag this layout has
  entry(2, 1, 3, 2); // a chain that links to itself
  entry(3, 1, 9, 4); // longer than the ring
  entry(5, 1, 1, 0, 4); // one good chain, buffer 4
  const resumed = region.packedRecord(0, silent)!.recover(8, PACKED_FRESH_BASE, neverUsed)!;
  assert.deepEqual(resumed.chains.map((c) => c.id), [4]);
  assert.deepEqual(resumed.chains[0].descriptors, [{ addr: 0x100, len: 4, id: 4, flags: 0 }]);
  assert.equal(resumed.base, 0x8000_8001, 'avail one slot past used, both in the first lap');
  for (const e of [0, 1, 2, 3]) assert.equal(raw.getUint8(32 + 32 * e), 0, `entry ${e} cleared`);

  // A used position no ring of this size has: every record is dropped, the front-end's base stands.
  raw.setUint16(16, 200, true);
  assert.equal(region.packedRecord(0, silent)!.recover(8, 0x8003_8003, neverUsed), undefined);
  assert.equal(raw.getUint8(32 + 32 * 5), 0);
  assert.equal(raw.getUint16(16, true), 3, 'used_idx from the front-end base');
});
