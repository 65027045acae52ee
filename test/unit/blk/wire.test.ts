import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  BLK_CONFIG,
  type BlkConfig,
  decodeRangeSegments,
  decodeRequestHeader,
  encodeRangeSegments,
  encodeRequestHeader,
} from '../../../src/devices/blk/wire.ts';

const u8 = fc.integer({ min: 0, max: 0xff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
/** Records compare equal to what decode builds (object literals). */
const plain = { noNullPrototype: true } as const;
const sector = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });

test('request header round-trips and lays out type, reserved, sector little-endian', () => {
  fc.assert(
    fc.property(u32, u32, sector, (type, reserved, s) => {
      assert.deepEqual(decodeRequestHeader(encodeRequestHeader({ type, reserved, sector: s })), { type, reserved, sector: s });
    }),
  );
  const bytes = encodeRequestHeader({ type: 1, reserved: 0, sector: 0x1_0000_0002 });
  assert.deepEqual([...bytes], [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
});

test('a sector of 2^64-1 decodes to a number of at least 2^53, never a small one', () => {
  const bytes = new Uint8Array(16).fill(0xff, 8);
  assert.ok(decodeRequestHeader(bytes).sector >= 2 ** 53);
});

test('discard / write-zeroes segments round-trip', () => {
  fc.assert(
    fc.property(fc.array(fc.record({ sector, numSectors: u32, flags: u32 }, plain), { maxLength: 8 }), (segs) => {
      const bytes = encodeRangeSegments(segs);
      assert.equal(bytes.length, segs.length * 16);
      assert.deepEqual(decodeRangeSegments(bytes), segs);
    }),
  );
});

const config: fc.Arbitrary<BlkConfig> = fc.record({
  capacity: sector,
  sizeMax: u32,
  segMax: u32,
  cylinders: u16,
  heads: u8,
  sectors: u8,
  blkSize: u32,
  physicalBlockExp: u8,
  alignmentOffset: u8,
  minIoSize: u16,
  optIoSize: u32,
  writeback: u8,
  numQueues: u16,
  maxDiscardSectors: u32,
  maxDiscardSeg: u32,
  discardSectorAlignment: u32,
  maxWriteZeroesSectors: u32,
  maxWriteZeroesSeg: u32,
  writeZeroesMayUnmap: u8,
}, plain);

test('configuration space round-trips', () => {
  fc.assert(
    fc.property(config, (c) => {
      const bytes = BLK_CONFIG.encode(c);
      assert.equal(bytes.length, BLK_CONFIG.size);
      assert.deepEqual(BLK_CONFIG.decode(bytes), c);
    }),
  );
});

test('configuration fields sit at the offsets of struct virtio_blk_config and padding stays zero', () => {
  fc.assert(
    fc.property(config, (c) => {
      const bytes = BLK_CONFIG.encode(c, new Uint8Array(BLK_CONFIG.size).fill(0xaa));
      const v = new DataView(bytes.buffer);
      assert.equal(v.getUint32(0, true) + v.getUint32(4, true) * 2 ** 32, c.capacity);
      assert.equal(v.getUint8(32), c.writeback);
      assert.equal(v.getUint16(34, true), c.numQueues);
      assert.equal(v.getUint32(48, true), c.maxWriteZeroesSectors);
      assert.equal(bytes[33], 0, 'unused0');
      assert.deepEqual([...bytes.subarray(57, 60)], [0, 0, 0], 'unused1');
    }),
  );
  assert.equal(BLK_CONFIG.offset.writeZeroesMayUnmap, 56);
});

test('decoding a short configuration space names the sizes', () => {
  assert.throws(() => BLK_CONFIG.decode(new Uint8Array(8)), /8 bytes, expected 60/);
});
