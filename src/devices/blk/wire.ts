/**
 * The virtio-blk wire format (§5.2): feature bits, request header and types, status codes, the
 * discard / write-zeroes range segment and the configuration space. Device and driver both encode
 * and decode through this module so the two halves cannot disagree on a byte.
 *
 * 64-bit sector numbers are JavaScript numbers, as guest addresses are (see virtio/memory.ts): a
 * disk of 2^53 sectors is 4 ZiB, so every real sector is exact, and a hostile value of 2^53 or more
 * stays >= 2^53 after conversion and so still fails the capacity check.
 */

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

/** §5.2.4 `struct virtio_blk_geometry`. */
export interface Geometry {
  readonly cylinders: number;
  readonly heads: number;
  readonly sectors: number;
}

/** §5.2.4 `struct virtio_blk_topology`, in logical blocks. */
export interface Topology {
  /** log2 of logical blocks per physical block. */
  readonly physicalBlockExp: number;
  readonly alignmentOffset: number;
  readonly minIoSize: number;
  readonly optIoSize: number;
}

/**
 * The configuration fields this project serves (§5.2.4). A field is meaningful only when its
 * feature is offered; it is encoded as 0 otherwise. Secure erase and zoned fields are not served:
 * the device offers neither feature, and the configuration space ends before them.
 */
export interface BlkConfig {
  /** Size in 512-byte sectors; always present. */
  readonly capacity: number;
  readonly sizeMax: number;
  readonly segMax: number;
  readonly geometry: Geometry;
  readonly blkSize: number;
  readonly topology: Topology;
  /** 1 for a writeback cache, 0 for writethrough (CONFIG_WCE). */
  readonly writeback: number;
  readonly numQueues: number;
  readonly maxDiscardSectors: number;
  readonly maxDiscardSeg: number;
  readonly discardSectorAlignment: number;
  readonly maxWriteZeroesSectors: number;
  readonly maxWriteZeroesSeg: number;
  readonly writeZeroesMayUnmap: number;
}

/** Byte offsets of `struct virtio_blk_config`'s fields (§5.2.4). */
export const ConfigOffset = {
  capacity: 0,
  sizeMax: 8,
  segMax: 12,
  cylinders: 16,
  heads: 18,
  sectors: 19,
  blkSize: 20,
  physicalBlockExp: 24,
  alignmentOffset: 25,
  minIoSize: 26,
  optIoSize: 28,
  writeback: 32,
  numQueues: 34,
  maxDiscardSectors: 36,
  maxDiscardSeg: 40,
  discardSectorAlignment: 44,
  maxWriteZeroesSectors: 48,
  maxWriteZeroesSeg: 52,
  writeZeroesMayUnmap: 56,
} as const;

/** Through `write_zeroes_may_unmap` and its padding `unused1[3]`. */
export const CONFIG_SIZE = 60;

/** Encode into `out` (CONFIG_SIZE bytes); padding bytes are zeroed as §5.2.5.2 requires. */
export function encodeConfig(c: BlkConfig, out: Uint8Array = new Uint8Array(CONFIG_SIZE)): Uint8Array {
  out.fill(0, 0, CONFIG_SIZE);
  const v = viewOf(out);
  const o = ConfigOffset;
  setU64(v, o.capacity, c.capacity);
  v.setUint32(o.sizeMax, c.sizeMax, true);
  v.setUint32(o.segMax, c.segMax, true);
  v.setUint16(o.cylinders, c.geometry.cylinders, true);
  v.setUint8(o.heads, c.geometry.heads);
  v.setUint8(o.sectors, c.geometry.sectors);
  v.setUint32(o.blkSize, c.blkSize, true);
  v.setUint8(o.physicalBlockExp, c.topology.physicalBlockExp);
  v.setUint8(o.alignmentOffset, c.topology.alignmentOffset);
  v.setUint16(o.minIoSize, c.topology.minIoSize, true);
  v.setUint32(o.optIoSize, c.topology.optIoSize, true);
  v.setUint8(o.writeback, c.writeback);
  v.setUint16(o.numQueues, c.numQueues, true);
  v.setUint32(o.maxDiscardSectors, c.maxDiscardSectors, true);
  v.setUint32(o.maxDiscardSeg, c.maxDiscardSeg, true);
  v.setUint32(o.discardSectorAlignment, c.discardSectorAlignment, true);
  v.setUint32(o.maxWriteZeroesSectors, c.maxWriteZeroesSectors, true);
  v.setUint32(o.maxWriteZeroesSeg, c.maxWriteZeroesSeg, true);
  v.setUint8(o.writeZeroesMayUnmap, c.writeZeroesMayUnmap);
  return out;
}

/** Decode CONFIG_SIZE bytes of configuration space. */
export function decodeConfig(bytes: Uint8Array): BlkConfig {
  if (bytes.length < CONFIG_SIZE) {
    throw new RangeError(`virtio-blk configuration space is ${bytes.length} bytes, expected ${CONFIG_SIZE}`);
  }
  const v = viewOf(bytes);
  const o = ConfigOffset;
  return {
    capacity: getU64(v, o.capacity),
    sizeMax: v.getUint32(o.sizeMax, true),
    segMax: v.getUint32(o.segMax, true),
    geometry: {
      cylinders: v.getUint16(o.cylinders, true),
      heads: v.getUint8(o.heads),
      sectors: v.getUint8(o.sectors),
    },
    blkSize: v.getUint32(o.blkSize, true),
    topology: {
      physicalBlockExp: v.getUint8(o.physicalBlockExp),
      alignmentOffset: v.getUint8(o.alignmentOffset),
      minIoSize: v.getUint16(o.minIoSize, true),
      optIoSize: v.getUint32(o.optIoSize, true),
    },
    writeback: v.getUint8(o.writeback),
    numQueues: v.getUint16(o.numQueues, true),
    maxDiscardSectors: v.getUint32(o.maxDiscardSectors, true),
    maxDiscardSeg: v.getUint32(o.maxDiscardSeg, true),
    discardSectorAlignment: v.getUint32(o.discardSectorAlignment, true),
    maxWriteZeroesSectors: v.getUint32(o.maxWriteZeroesSectors, true),
    maxWriteZeroesSeg: v.getUint32(o.maxWriteZeroesSeg, true),
    writeZeroesMayUnmap: v.getUint8(o.writeZeroesMayUnmap),
  };
}
