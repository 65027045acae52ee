import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MAX_MEM_SLOTS, MAX_TOTAL_SIZE, MemoryTable, MemoryTableError } from '../../../src/transports/vhost-user/memory-table.ts';
import type { RegionDescription, RegionMapping } from '../../../src/transports/vhost-user/memory-table.ts';

/** A mapper over plain arrays that records what is mapped, so tests see leaks and double unmaps. */
function fakeMapper(): { map: (fd: number, offset: number, size: number) => RegionMapping; live: Set<number> } {
  const live = new Set<number>();
  return {
    live,
    map(fd, _offset, size) {
      if (fd < 0) throw new Error(`bad fd ${fd}`);
      live.add(fd);
      return {
        bytes: new Uint8Array(size),
        unmap: () => {
          assert.ok(live.delete(fd), `fd ${fd} unmapped twice`);
        },
      };
    },
  };
}

function region(guestAddr: number, size: number, userAddr: number, mmapOffset = 0): RegionDescription {
  return { guestAddr: BigInt(guestAddr), size: BigInt(size), userAddr: BigInt(userAddr), mmapOffset: BigInt(mmapOffset) };
}

test('SET_MEM_TABLE layout becomes guest memory at guest-physical addresses', () => {
  const m = fakeMapper();
  const table = new MemoryTable(m.map);
  table.replace([region(0, 0x10000, 0x7f00_0000_0000), region(0x100000, 0x20000, 0x7f00_1000_0000)], [3, 4]);
  const mem = table.memory!;
  assert.ok(mem.contains(0, 0x10000));
  assert.ok(mem.contains(0x100000, 0x20000));
  assert.ok(!mem.contains(0x10000, 1));
  mem.writeU32(0x100010, 0xdeadbeef);
  assert.equal(mem.readU32(0x100010), 0xdeadbeef);
});

test('user addresses translate to guest-physical only when the whole range lies in one region', () => {
  const table = new MemoryTable(fakeMapper().map);
  table.replace([region(0, 0x1000, 0x5000), region(0x2000, 0x1000, 0x6000)], [3, 4]);
  assert.equal(table.userToGuest(0x5010n, 16), 0x10);
  assert.equal(table.userToGuest(0x6ff0n, 16), 0x2ff0);
  // 0x5ff8..0x6008 is contiguous in user space but straddles two regions.
  assert.equal(table.userToGuest(0x5ff8n, 16), undefined);
  assert.equal(table.userToGuest(0x4fffn, 1), undefined);
  assert.equal(table.userToGuest(0x7000n, 1), undefined);
  assert.equal(table.userToGuest(2n ** 64n - 1n, 1), undefined);
});

test('overlapping regions are refused in either address space and nothing changes', () => {
  const m = fakeMapper();
  const table = new MemoryTable(m.map);
  table.replace([region(0, 0x1000, 0x5000)], [3]);
  assert.throws(() => table.replace([region(0, 0x2000, 0x9000), region(0x1000, 0x1000, 0xb000)], [5, 6]), /guest-physical/);
  assert.throws(() => table.replace([region(0, 0x1000, 0x9000), region(0x8000, 0x1000, 0x9800)], [5, 6]), /front-end address space/);
  assert.equal(table.userToGuest(0x5000n, 1), 0, 'the old table is still in force');
  assert.deepEqual([...m.live], [3]);
});

test('hostile sizes and addresses are refused with a MemoryTableError', () => {
  const table = new MemoryTable(fakeMapper().map);
  const bad: RegionDescription[] = [
    region(0, 0, 0),
    { guestAddr: 2n ** 63n, size: 0x1000n, userAddr: 0n, mmapOffset: 0n },
    { guestAddr: 2n ** 53n - 0x800n, size: 0x1000n, userAddr: 0n, mmapOffset: 0n },
    { guestAddr: 0n, size: 0x1000n, userAddr: 2n ** 64n - 1n, mmapOffset: 0n },
    { guestAddr: 0n, size: 0x1000n, userAddr: 0n, mmapOffset: 2n ** 60n },
  ];
  for (const d of bad) assert.throws(() => table.replace([d], [3]), MemoryTableError);
  assert.throws(() => table.replace([region(0, 0x1000, 0)], []), /1 regions arrived with 0 file descriptors/);
  assert.equal(table.memory, undefined);
});

test('a mapping failure part-way unmaps the regions already mapped', () => {
  const m = fakeMapper();
  const table = new MemoryTable(m.map);
  assert.throws(() => table.replace([region(0, 0x1000, 0), region(0x1000, 0x1000, 0x1000)], [3, -1]), /cannot map/);
  assert.equal(m.live.size, 0);
});

test('replace returns the old mappings for the caller to unmap', () => {
  const m = fakeMapper();
  const table = new MemoryTable(m.map);
  table.replace([region(0, 0x1000, 0)], [3]);
  const old = table.replace([region(0, 0x1000, 0)], [4]);
  assert.equal(old.length, 1);
  for (const o of old) o.unmap();
  assert.deepEqual([...m.live], [4]);
});

test('ADD_MEM_REG and REM_MEM_REG keep the table disjoint and find regions by their coordinates', () => {
  const m = fakeMapper();
  const table = new MemoryTable(m.map);
  table.add(region(0, 0x1000, 0x10000), 3);
  table.add(region(0x4000, 0x1000, 0x20000), 4);
  assert.throws(() => table.add(region(0x800, 0x1000, 0x30000), 5), /guest-physical/);
  assert.throws(() => table.remove(region(0x4000, 0x1000, 0x99999)), /no region/);
  for (const m of table.remove(region(0x4000, 0x1000, 0x20000, 0x123))) m.unmap();
  assert.equal(table.regionCount, 1);
  assert.ok(!table.memory!.contains(0x4000, 1));
  for (const m of table.remove(region(0, 0x1000, 0x10000))) m.unmap();
  assert.equal(table.memory, undefined);
  assert.equal(m.live.size, 0);
});

test('a region larger than one mapping is mapped in pieces split at guest-physical multiples of the limit', () => {
  const calls: [number, number, number][] = [];
  const live = new Set<number>();
  const table = new MemoryTable((fd, offset, size) => {
    calls.push([fd, offset, size]);
    const bytes = new Uint8Array(size);
    return { bytes, unmap: () => live.delete(offset) };
  }, 0x1000);
  table.replace([region(0x800, 0x3000, 0x9000, 0x100)], [3]);
  assert.deepEqual(calls, [
    [3, 0x100, 0x800],
    [3, 0x900, 0x1000],
    [3, 0x1900, 0x1000],
    [3, 0x2900, 0x800],
  ]);
  const mem = table.memory!;
  assert.ok(mem.contains(0x800, 0x800) && mem.contains(0x1000, 0x1000) && mem.contains(0x3000, 0x800));
  assert.ok(!mem.contains(0xff0, 0x20), 'one buffer is one mapping: a range across a piece boundary is refused');
  assert.equal(table.userToGuest(0x9000n, 0x3000), 0x800, 'ring translation sees the region whole');
  assert.equal(table.clear().length, 4);
});

test('a table describing more than 16 TiB in total is refused before anything is mapped', () => {
  const m = fakeMapper();
  const table = new MemoryTable(m.map);
  const half = MAX_TOTAL_SIZE / 2;
  assert.throws(() => table.replace([region(0, half, 0), region(half, half + 0x1000, half)], [3, 4]), /exceed the/);
  assert.equal(m.live.size, 0);
  table.add(region(0, 0x1000, 0), 3);
  assert.throws(() => table.add(region(0x1000, MAX_TOTAL_SIZE, 0x1000), 4), /exceed the/);
});

test('ADD_MEM_REG stops at the advertised slot count', () => {
  const table = new MemoryTable(fakeMapper().map);
  for (let i = 0; i < MAX_MEM_SLOTS; i++) table.add(region(i * 0x1000, 0x1000, i * 0x1000), 3 + i);
  assert.throws(() => table.add(region(MAX_MEM_SLOTS * 0x1000, 0x1000, MAX_MEM_SLOTS * 0x1000), 999), /maximum/);
});

test('property: a translated user range lands at the same offset of its region in guest-physical space', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ size: fc.integer({ min: 1, max: 64 }), gap: fc.integer({ min: 0, max: 64 }), ugap: fc.integer({ min: 0, max: 64 }) }), {
        minLength: 1,
        maxLength: 6,
      }),
      fc.bigInt({ min: 0n, max: 4096n }),
      fc.integer({ min: 0, max: 80 }),
      (layout, probe, len) => {
        let g = 0;
        let u = 0x1000;
        const regions = layout.map((r) => {
          const d = region(g + r.gap, r.size, u + r.ugap);
          g += r.gap + r.size;
          u += r.ugap + r.size + 7;
          return d;
        });
        const table = new MemoryTable(fakeMapper().map);
        table.replace(regions, regions.map((_, i) => 10 + i));
        const gpa = table.userToGuest(0x1000n + probe, len);
        if (gpa === undefined) return;
        const owner = regions.find((d) => 0x1000n + probe >= d.userAddr && 0x1000n + probe < d.userAddr + d.size)!;
        assert.equal(BigInt(gpa), owner.guestAddr + (0x1000n + probe - owner.userAddr));
        assert.ok(table.memory!.contains(gpa, len));
      },
    ),
  );
});
