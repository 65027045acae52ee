/**
 * The virtio-blk wire format (§5.2): feature bits, request header and types, status codes, the
 * discard / write-zeroes range segment and the configuration space. Device and driver both encode
 * and decode through this module so the two halves cannot disagree on a byte.
 *
 * 64-bit sector numbers are JavaScript numbers, as guest addresses are (see virtio/memory.ts): a
 * disk of 2^53 sectors is 4 ZiB, so every real sector is exact, and a hostile value of 2^53 or more
 * stays >= 2^53 after conversion and so still fails the capacity check.
 */
import { ConfigLayout, type ValuesOf } from '../../virtio/config-layout.ts';
import { bitNames } from '../../virtio/features.ts';

/** The protocol unit: sector numbers and data lengths count 512-byte sectors whatever blk_size says (§5.2.5). */
export const SECTOR_SIZE = 512;
export const SECTOR_SHIFT = 9;

/** §5.2.3 feature bits (bit numbers). */
export const BlkFeature = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
  LIFETIME: 15,
  SECURE_ERASE: 16,
  ZONED: 17,
} as const;

/** Names for log and error messages (features.ts describeFeatures). */
export const BLK_FEATURE_NAMES: Readonly<Record<number, string>> = bitNames(BlkFeature);

/** §5.2.6 request types. */
export const RequestType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const;

/** §5.2.6 status byte values. */
export const BlkStatus = {
  OK: 0,
  IOERR: 1,
  UNSUPP: 2,
} as const;

/** Size of `struct virtio_blk_req`'s leading fields: type, reserved, sector. */
export const REQUEST_HEADER_SIZE = 16;
/** The status byte closing every request's device-writable part. */
export const STATUS_SIZE = 1;
/** Length of the GET_ID answer: a NUL-padded ASCII string without terminator at full length (§5.2.6). */
export const ID_SIZE = 20;

const U32 = 0x1_0000_0000;

function getU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * U32 + view.getUint32(at, true);
}

function setU64(view: DataView, at: number, v: number): void {
  view.setUint32(at, v % U32, true);
  view.setUint32(at + 4, Math.floor(v / U32), true);
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export interface RequestHeader {
  readonly type: number;
  /** Formerly ioprio (§5.2.6.4 legacy); carried, never interpreted. */
  readonly reserved: number;
  readonly sector: number;
}

// The request header is on every request's path, so it is encoded byte by byte rather than
// through a DataView created per call.

function putU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}

function takeU32(b: Uint8Array, at: number): number {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
}

export function encodeRequestHeader(h: RequestHeader, out: Uint8Array = new Uint8Array(REQUEST_HEADER_SIZE)): Uint8Array {
  putU32(out, 0, h.type);
  putU32(out, 4, h.reserved);
  putU32(out, 8, h.sector % U32);
  putU32(out, 12, Math.floor(h.sector / U32));
  return out;
}

/** Decode the first REQUEST_HEADER_SIZE bytes of `bytes` (the caller checked the length). */
export function decodeRequestHeader(bytes: Uint8Array): RequestHeader {
  return { type: takeU32(bytes, 0), reserved: takeU32(bytes, 4), sector: takeU32(bytes, 12) * U32 + takeU32(bytes, 8) };
}

/** `struct virtio_blk_discard_write_zeroes` (§5.2.6): one range of a DISCARD or WRITE_ZEROES request. */
export interface RangeSegment {
  readonly sector: number;
  readonly numSectors: number;
  readonly flags: number;
}

export const RANGE_SEGMENT_SIZE = 16;

/** Flag bits of a range segment; every other bit is reserved and answered with UNSUPP (§5.2.6.2). */
export const RangeFlag = {
  UNMAP: 1,
} as const;

export function encodeRangeSegments(segs: readonly RangeSegment[]): Uint8Array {
  const out = new Uint8Array(segs.length * RANGE_SEGMENT_SIZE);
  const v = viewOf(out);
  segs.forEach((s, i) => {
    const at = i * RANGE_SEGMENT_SIZE;
    setU64(v, at, s.sector);
    v.setUint32(at + 8, s.numSectors, true);
    v.setUint32(at + 12, s.flags, true);
  });
  return out;
}

/** Decode every whole segment in `bytes` (the caller checked the length is a multiple of the segment size). */
export function decodeRangeSegments(bytes: Uint8Array): RangeSegment[] {
  const v = viewOf(bytes);
  const segs: RangeSegment[] = [];
  for (let at = 0; at + RANGE_SEGMENT_SIZE <= bytes.length; at += RANGE_SEGMENT_SIZE) {
    segs.push({ sector: getU64(v, at), numSectors: v.getUint32(at + 8, true), flags: v.getUint32(at + 12, true) });
  }
  return segs;
}

/**
 * `struct virtio_blk_config` (§5.2.4), through `write_zeroes_may_unmap` and its padding
 * `unused1[3]`. A field is meaningful only when its feature is offered and is encoded as 0
 * otherwise. Secure erase and zoned fields are not served: the device offers neither feature,
 * and the space ends before them. Geometry and topology are flattened into their members.
 */
export const BLK_CONFIG = new ConfigLayout(
  'virtio-blk',
  {
    capacity: { offset: 0, width: 8, about: '512-byte sectors' },
    sizeMax: { offset: 8, width: 4, feature: BlkFeature.SIZE_MAX },
    segMax: { offset: 12, width: 4, feature: BlkFeature.SEG_MAX },
    cylinders: { offset: 16, width: 2, feature: BlkFeature.GEOMETRY },
    heads: { offset: 18, width: 1, feature: BlkFeature.GEOMETRY },
    sectors: { offset: 19, width: 1, feature: BlkFeature.GEOMETRY },
    blkSize: { offset: 20, width: 4, feature: BlkFeature.BLK_SIZE },
    /** log2 of logical blocks per physical block. */
    physicalBlockExp: { offset: 24, width: 1, feature: BlkFeature.TOPOLOGY },
    alignmentOffset: { offset: 25, width: 1, feature: BlkFeature.TOPOLOGY },
    minIoSize: { offset: 26, width: 2, feature: BlkFeature.TOPOLOGY },
    optIoSize: { offset: 28, width: 4, feature: BlkFeature.TOPOLOGY },
    /** 1 for a writeback cache, 0 for writethrough. */
    writeback: { offset: 32, width: 1, feature: BlkFeature.CONFIG_WCE },
    numQueues: { offset: 34, width: 2, feature: BlkFeature.MQ },
    maxDiscardSectors: { offset: 36, width: 4, feature: BlkFeature.DISCARD },
    maxDiscardSeg: { offset: 40, width: 4, feature: BlkFeature.DISCARD },
    discardSectorAlignment: { offset: 44, width: 4, feature: BlkFeature.DISCARD },
    maxWriteZeroesSectors: { offset: 48, width: 4, feature: BlkFeature.WRITE_ZEROES },
    maxWriteZeroesSeg: { offset: 52, width: 4, feature: BlkFeature.WRITE_ZEROES },
    writeZeroesMayUnmap: { offset: 56, width: 1, feature: BlkFeature.WRITE_ZEROES },
  },
  60,
);

export type BlkConfig = ValuesOf<typeof BLK_CONFIG>;
