import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ADDRESS_LIMIT, GuestMemory, GuestMemoryError, ViewCache, addr64 } from '../../../src/virtio/memory.ts';

function twoRegions(): GuestMemory {
  return new GuestMemory([
    { guestAddr: 0x1000, bytes: new Uint8Array(0x1000) },
    { guestAddr: 0x10000, bytes: new Uint8Array(0x2000) },
  ]);
}

test('slices are zero-copy views of the backing bytes', () => {
  const backing = new Uint8Array(64);
  const mem = new GuestMemory([{ guestAddr: 0x100, bytes: backing }]);
  mem.slice(0x110, 4).set([1, 2, 3, 4]);
  assert.deepEqual([...backing.subarray(16, 20)], [1, 2, 3, 4]);
  mem.writeU32(0x120, 0xdeadbeef);
  assert.equal(mem.readU32(0x120), 0xdeadbeef);
  assert.equal(mem.readU16(0x120), 0xbeef);
});

test('accesses outside every region, straddling regions or overflowing are refused', () => {
  const mem = twoRegions();
  assert.equal(mem.trySlice(0x0, 1), undefined);
  assert.equal(mem.trySlice(0x1fff, 2), undefined, 'past the end of the first region');
  assert.equal(mem.trySlice(0x1000, 0x1001), undefined);
  assert.equal(mem.trySlice(0x11fff, 0x1001), undefined, 'adjacent regions are not one buffer');
  assert.equal(mem.trySlice(-1, 1), undefined);
  assert.equal(mem.trySlice(0x1000, -1), undefined);
  assert.equal(mem.trySlice(Number.NaN, 1), undefined);
  assert.equal(mem.trySlice(0x1000, Number.NaN), undefined);
  assert.equal(mem.trySlice(addr64(0x1000, 0xffffffff), 16), undefined, 'address above 2^53');
  assert.throws(() => mem.readU32(0x1ffe), GuestMemoryError);
  assert.equal(mem.slice(0x11ffc, 4).length, 4);
});

test('regions that overlap or reach 2^53 are refused', () => {
  assert.throws(() => new GuestMemory([]), RangeError);
  assert.throws(
    () =>
      new GuestMemory([
        { guestAddr: 0, bytes: new Uint8Array(0x2000) },
        { guestAddr: 0x1000, bytes: new Uint8Array(16) },
      ]),
    /overlap/,
  );
  assert.throws(() => new GuestMemory([{ guestAddr: ADDRESS_LIMIT - 8, bytes: new Uint8Array(16) }]), RangeError);
});

test('property: a slice is granted exactly when the whole range is inside one region', () => {
  const mem = twoRegions();
  const inside = (a: number, l: number) =>
    (a >= 0x1000 && a + l <= 0x2000 && a < 0x2000) || (a >= 0x10000 && a + l <= 0x12000 && a < 0x12000);
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0x13000 }), fc.integer({ min: 0, max: 0x3000 }), (a, l) => {
      assert.equal(mem.trySlice(a, l) !== undefined, inside(a, l));
    }),
  );
});

test('a view cache gives the same view for the same bytes, offset and length, and a new one for anything else', () => {
  const a = Uint8Array.from({ length: 64 }, (_, i) => i);
  const b = Uint8Array.from({ length: 64 }, (_, i) => 100 + i);
  const cache = new ViewCache();
  const v = cache.view(a, 8, 4);
  assert.deepEqual([...v], [8, 9, 10, 11]);
  assert.equal(cache.view(a, 8, 4), v);
  const other = cache.view(b, 8, 4);
  assert.deepEqual([...other], [108, 109, 110, 111], 'another region at the same offset');
  assert.deepEqual([...cache.view(a, 8, 5)], [8, 9, 10, 11, 12]);
  assert.deepEqual([...cache.view(a, 9, 4)], [9, 10, 11, 12]);
  assert.equal(cache.view(b, 8, 4), other);
});

test('locate() names the region holding a range, and nothing for a range outside guest memory', () => {
  const m = new GuestMemory([
    { guestAddr: 0x1000, bytes: new Uint8Array(0x1000) },
    { guestAddr: 0x4000, bytes: new Uint8Array(0x1000) },
  ]);
  const r = m.locate(0x4010, 16)!;
  assert.equal(r.start, 0x4000);
  assert.equal(r.bytes.length, 0x1000);
  assert.equal(m.locate(0x1ff0, 0x20), undefined, 'past the end of a region');
  assert.equal(m.locate(0x3000, 1), undefined, 'between regions');
  assert.equal(m.locate(0x4000, -1), undefined);
});
