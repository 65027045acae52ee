import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DmaPool } from '../../../src/virtio/dma.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';

test('allocations are aligned, inside the pool, and refused when it is exhausted', () => {
  const pool = new DmaPool(GuestMemory.allocate(0x2000), 0x1000, 0x1000);
  const a = pool.alloc(10, 1)!;
  const b = pool.alloc(16, 256)!;
  assert.equal(a, 0x1000);
  assert.equal(b % 256, 0);
  assert.equal(pool.alloc(0x1000, 1), undefined);
  pool.free(a);
  pool.free(b);
  assert.equal(pool.freeBytes, 0x1000);
  assert.equal(pool.alloc(0x1000, 4096), 0x1000, 'freed neighbours merge back into one block');
});

test('bad sizes, alignments, frees and pool ranges are refused by name', () => {
  const memory = GuestMemory.allocate(0x1000);
  const pool = new DmaPool(memory, 0, 0x1000);
  assert.throws(() => pool.alloc(0, 1), /DMA allocation size 0 is not a positive integer/);
  assert.throws(() => pool.alloc(8, 3), /DMA alignment 3 is not a power of two/);
  assert.throws(() => pool.free(0x10), /DMA free of 0x10, which is not an allocated address/);
  assert.throws(() => new DmaPool(memory, 0x800, 0x1000), /DMA pool of 4096 bytes at 0x800 is not inside one guest memory region/);
  assert.throws(() => new DmaPool(memory, 0, -1), /DMA pool size -1/);
});

test('property: live allocations never overlap, stay in the pool, and all space returns after freeing', () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('alloc' as const), bytes: fc.integer({ min: 1, max: 300 }), alignLog: fc.integer({ min: 0, max: 8 }) }),
    fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
      const base = 0x100;
      const size = 0x1000;
      const pool = new DmaPool(GuestMemory.allocate(0x2000), base, size);
      const live: [number, number][] = [];
      for (const o of ops) {
        if (o.kind === 'alloc') {
          const align = 1 << o.alignLog;
          const addr = pool.alloc(o.bytes, align);
          if (addr === undefined) continue;
          assert.equal(addr % align, 0);
          assert.ok(addr >= base && addr + o.bytes <= base + size);
          for (const [s, e] of live) assert.ok(addr + o.bytes <= s || addr >= e, 'overlap');
          live.push([addr, addr + o.bytes]);
        } else if (live.length > 0) {
          const [[addr]] = live.splice(o.pick % live.length, 1);
          pool.free(addr);
        }
      }
      for (const [addr] of live) pool.free(addr);
      assert.equal(pool.freeBytes, size);
      assert.equal(pool.alloc(size, 1), base);
    }),
  );
});
