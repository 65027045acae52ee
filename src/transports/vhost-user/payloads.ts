/**
 * The payload layouts of vhost-user messages ("Payload" in vhost-user.rst), each as a typed
 * value with a decoder that checks the bytes and an encoder that produces them. Numbers are
 * little-endian (the protocol uses native order; this project runs on little-endian hosts).
 * 64-bit fields stay bigint: they are addresses and sizes the back-end must range-check
 * before any arithmetic.
 */
import { MAX_CONFIG_SIZE, MAX_MEMORY_REGIONS, MAX_PAYLOAD_SIZE } from './constants.ts';

/** One memory region ("Memory region description"). */
export interface MemoryRegionDescription {
  readonly guestAddr: bigint;
  readonly size: bigint;
  readonly userAddr: bigint;
  readonly mmapOffset: bigint;
  /** Present exactly when XEN_MMAP was negotiated. */
  readonly xen?: { readonly flags: number; readonly domid: number };
}

export type Payload =
  | { readonly kind: 'empty' }
  | { readonly kind: 'u64'; readonly value: bigint }
  /** "A vring state description", also the vring descriptor index(es) of SET/GET_VRING_BASE. */
  | { readonly kind: 'vring-state'; readonly index: number; readonly num: number }
  | {
      readonly kind: 'vring-address';
      readonly index: number;
      readonly flags: number;
      readonly descUser: bigint;
      readonly usedUser: bigint;
      readonly availUser: bigint;
      readonly logGuest: bigint;
    }
  | { readonly kind: 'memory-table'; readonly regions: readonly MemoryRegionDescription[] }
  | { readonly kind: 'memory-region'; readonly region: MemoryRegionDescription }
  | { readonly kind: 'log'; readonly size: bigint; readonly offset: bigint }
  | {
      readonly kind: 'iotlb';
      readonly iova: bigint;
      readonly size: bigint;
      readonly userAddr: bigint;
      readonly perm: number;
      readonly type: number;
    }
  /** Config space access: `data.length` is the access size. */
  | { readonly kind: 'config'; readonly offset: number; readonly flags: number; readonly data: Uint8Array }
  /** `u64` holds the ring index (bits 0-7) and the no-fd flag (bit 8). */
  | { readonly kind: 'vring-area'; readonly u64: bigint; readonly size: bigint; readonly offset: bigint }
  | {
      readonly kind: 'inflight';
      readonly mmapSize: bigint;
      readonly mmapOffset: bigint;
      readonly numQueues: number;
      readonly queueSize: number;
    }
  | { readonly kind: 'shared-object'; readonly uuid: Uint8Array }
  | { readonly kind: 'device-state'; readonly direction: number; readonly phase: number }
  /** A layout this codec carries without interpreting (crypto sessions: QEMU-internal structs). */
  | { readonly kind: 'opaque'; readonly bytes: Uint8Array };

export type PayloadKind = Payload['kind'];
export type PayloadOf<K extends PayloadKind> = Extract<Payload, { kind: K }>;

/** Which rule a payload broke, and how. */
export interface PayloadViolation {
  readonly rule: 'payload-size' | 'region-count' | 'region-empty' | 'region-overflow' | 'config-size' | 'config-range';
  readonly detail: string;
}

/** What decoding depends on beyond the bytes: the negotiated region layout. */
export interface LayoutOptions {
  readonly xenMmap: boolean;
}

const U64_LIMIT = 1n << 64n;
const UUID_SIZE = 16;

const regionSize = (o: LayoutOptions): number => (o.xenMmap ? 40 : 32);

interface Layout<K extends PayloadKind> {
  /** Whether a payload of `size` bytes can be this layout (before looking inside). */
  fits(size: number, o: LayoutOptions): boolean;
  /** Human description of the accepted sizes, for errors. */
  sizes(o: LayoutOptions): string;
  decode(v: DataView, o: LayoutOptions): PayloadOf<K> | PayloadViolation;
  /** Byte length of the encoding of `p`. */
  length(p: PayloadOf<K>, o: LayoutOptions): number;
  encode(p: PayloadOf<K>, v: DataView, o: LayoutOptions): void;
}

function fixed<K extends PayloadKind>(
  size: number,
  decode: (v: DataView) => PayloadOf<K>,
  encode: (p: PayloadOf<K>, v: DataView) => void,
): Layout<K> {
  return {
    fits: (n) => n === size,
    sizes: () => `${size} bytes`,
    decode,
    length: () => size,
    encode,
  };
}

const u64 = (v: DataView, at: number): bigint => v.getBigUint64(at, true);
const u32 = (v: DataView, at: number): number => v.getUint32(at, true);

function setU64(v: DataView, at: number, value: bigint, field: string): void {
  if (value < 0n || value >= U64_LIMIT) throw new RangeError(`${field} ${value} does not fit 64 bits`);
  v.setBigUint64(at, value, true);
}

function setUint(v: DataView, at: number, value: number, bits: 8 | 16 | 32, field: string): void {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) throw new RangeError(`${field} ${value} does not fit ${bits} bits`);
  if (bits === 8) v.setUint8(at, value);
  else if (bits === 16) v.setUint16(at, value, true);
  else v.setUint32(at, value, true);
}

function bytesOf(v: DataView, at: number, length: number): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset + at, length).slice();
}

/** Read one region at `at`, or the rule it breaks (§ "Memory region description"). */
function decodeRegion(v: DataView, at: number, o: LayoutOptions): MemoryRegionDescription | PayloadViolation {
  const guestAddr = u64(v, at);
  const size = u64(v, at + 8);
  const userAddr = u64(v, at + 16);
  const mmapOffset = u64(v, at + 24);
  if (size === 0n) return { rule: 'region-empty', detail: `region at guest 0x${guestAddr.toString(16)} has size 0` };
  for (const [name, base] of [
    ['guest address', guestAddr],
    ['user address', userAddr],
    ['mmap offset', mmapOffset],
  ] as const) {
    if (base + size > U64_LIMIT) {
      return { rule: 'region-overflow', detail: `region ${name} 0x${base.toString(16)} + size 0x${size.toString(16)} wraps past 2^64` };
    }
  }
  const region = { guestAddr, size, userAddr, mmapOffset };
  return o.xenMmap ? { ...region, xen: { flags: u32(v, at + 32), domid: u32(v, at + 36) } } : region;
}

function encodeRegion(r: MemoryRegionDescription, v: DataView, at: number, o: LayoutOptions): void {
  setU64(v, at, r.guestAddr, 'region guest address');
  setU64(v, at + 8, r.size, 'region size');
  setU64(v, at + 16, r.userAddr, 'region user address');
  setU64(v, at + 24, r.mmapOffset, 'region mmap offset');
  if (o.xenMmap) {
    if (r.xen === undefined) throw new RangeError('XEN_MMAP is negotiated but a region has no Xen fields');
    setUint(v, at + 32, r.xen.flags, 32, 'region Xen flags');
    setUint(v, at + 36, r.xen.domid, 32, 'region Xen domid');
  } else if (r.xen !== undefined) {
    throw new RangeError('a region has Xen fields but XEN_MMAP is not negotiated');
  }
}

const isViolation = (x: object): x is PayloadViolation => 'rule' in x;

const LAYOUTS: { readonly [K in PayloadKind]: Layout<K> } = {
  empty: fixed(
    0,
    () => ({ kind: 'empty' }),
    () => undefined,
  ),
  u64: fixed(
    8,
    (v) => ({ kind: 'u64', value: u64(v, 0) }),
    (p, v) => setU64(v, 0, p.value, 'u64 payload'),
  ),
  'vring-state': fixed(
    8,
    (v) => ({ kind: 'vring-state', index: u32(v, 0), num: u32(v, 4) }),
    (p, v) => {
      const s = p;
      setUint(v, 0, s.index, 32, 'vring index');
      setUint(v, 4, s.num, 32, 'vring num');
    },
  ),
  'vring-address': fixed(
    40,
    (v) => ({
      kind: 'vring-address',
      index: u32(v, 0),
      flags: u32(v, 4),
      descUser: u64(v, 8),
      usedUser: u64(v, 16),
      availUser: u64(v, 24),
      logGuest: u64(v, 32),
    }),
    (p, v) => {
      const a = p;
      setUint(v, 0, a.index, 32, 'vring index');
      setUint(v, 4, a.flags, 32, 'vring flags');
      setU64(v, 8, a.descUser, 'descriptor address');
      setU64(v, 16, a.usedUser, 'used address');
      setU64(v, 24, a.availUser, 'available address');
      setU64(v, 32, a.logGuest, 'log address');
    },
  ),
  'memory-table': {
    fits: (n, o) => n >= 8 && (n - 8) % regionSize(o) === 0,
    sizes: (o) => `8 + ${regionSize(o)} bytes per region`,
    decode(v, o) {
      const count = u32(v, 0);
      if (count > MAX_MEMORY_REGIONS) return { rule: 'region-count', detail: `${count} regions exceed the maximum ${MAX_MEMORY_REGIONS}` };
      if (v.byteLength !== 8 + count * regionSize(o)) {
        return { rule: 'payload-size', detail: `${count} regions need ${8 + count * regionSize(o)} bytes, payload has ${v.byteLength}` };
      }
      const regions: MemoryRegionDescription[] = [];
      for (let i = 0; i < count; i++) {
        const r = decodeRegion(v, 8 + i * regionSize(o), o);
        if (isViolation(r)) return r;
        regions.push(r);
      }
      return { kind: 'memory-table', regions };
    },
    length: (p, o) => 8 + p.regions.length * regionSize(o),
    encode(p, v, o) {
      const { regions } = p;
      if (regions.length > MAX_MEMORY_REGIONS) throw new RangeError(`${regions.length} regions exceed the maximum ${MAX_MEMORY_REGIONS}`);
      v.setUint32(0, regions.length, true);
      regions.forEach((r, i) => encodeRegion(r, v, 8 + i * regionSize(o), o));
    },
  },
  'memory-region': {
    fits: (n, o) => n === 8 + regionSize(o),
    sizes: (o) => `${8 + regionSize(o)} bytes`,
    decode(v, o) {
      const r = decodeRegion(v, 8, o);
      return isViolation(r) ? r : { kind: 'memory-region', region: r };
    },
    length: (_p, o) => 8 + regionSize(o),
    encode: (p, v, o) => encodeRegion(p.region, v, 8, o),
  },
  log: fixed(
    16,
    (v) => ({ kind: 'log', size: u64(v, 0), offset: u64(v, 8) }),
    (p, v) => {
      const l = p;
      setU64(v, 0, l.size, 'log size');
      setU64(v, 8, l.offset, 'log offset');
    },
  ),
  // struct vhost_iotlb_msg: three u64, two u8, padded to 32 bytes.
  iotlb: fixed(
    32,
    (v) => ({ kind: 'iotlb', iova: u64(v, 0), size: u64(v, 8), userAddr: u64(v, 16), perm: v.getUint8(24), type: v.getUint8(25) }),
    (p, v) => {
      const t = p;
      setU64(v, 0, t.iova, 'IOTLB iova');
      setU64(v, 8, t.size, 'IOTLB size');
      setU64(v, 16, t.userAddr, 'IOTLB user address');
      setUint(v, 24, t.perm, 8, 'IOTLB permissions');
      setUint(v, 25, t.type, 8, 'IOTLB type');
    },
  ),
  config: {
    fits: (n) => n >= 12,
    sizes: () => `12 + access size bytes`,
    decode(v) {
      const offset = u32(v, 0);
      const size = u32(v, 4);
      const flags = u32(v, 8);
      if (size > MAX_CONFIG_SIZE) return { rule: 'config-size', detail: `config access of ${size} bytes exceeds ${MAX_CONFIG_SIZE}` };
      if (v.byteLength !== 12 + size) {
        return { rule: 'payload-size', detail: `config access of ${size} bytes needs ${12 + size} payload bytes, has ${v.byteLength}` };
      }
      if (offset + size > 0xffff_ffff) return { rule: 'config-range', detail: `config offset ${offset} + size ${size} wraps past 2^32` };
      return { kind: 'config', offset, flags, data: bytesOf(v, 12, size) };
    },
    length: (p) => 12 + p.data.length,
    encode(p, v) {
      const c = p;
      if (c.data.length > MAX_CONFIG_SIZE) throw new RangeError(`config access of ${c.data.length} bytes exceeds ${MAX_CONFIG_SIZE}`);
      setUint(v, 0, c.offset, 32, 'config offset');
      v.setUint32(4, c.data.length, true);
      setUint(v, 8, c.flags, 32, 'config flags');
      new Uint8Array(v.buffer, v.byteOffset + 12, c.data.length).set(c.data);
    },
  },
  'vring-area': fixed(
    24,
    (v) => ({ kind: 'vring-area', u64: u64(v, 0), size: u64(v, 8), offset: u64(v, 16) }),
    (p, v) => {
      const a = p;
      setU64(v, 0, a.u64, 'vring area index and flags');
      setU64(v, 8, a.size, 'vring area size');
      setU64(v, 16, a.offset, 'vring area offset');
    },
  ),
  // Two u64 and two u16, padded to 24 bytes as QEMU's (unpacked) VhostUserInflight.
  inflight: fixed(
    24,
    (v) => ({
      kind: 'inflight',
      mmapSize: u64(v, 0),
      mmapOffset: u64(v, 8),
      numQueues: v.getUint16(16, true),
      queueSize: v.getUint16(18, true),
    }),
    (p, v) => {
      const f = p;
      setU64(v, 0, f.mmapSize, 'inflight mmap size');
      setU64(v, 8, f.mmapOffset, 'inflight mmap offset');
      setUint(v, 16, f.numQueues, 16, 'inflight queue count');
      setUint(v, 18, f.queueSize, 16, 'inflight queue size');
    },
  ),
  'shared-object': fixed(
    UUID_SIZE,
    (v) => ({ kind: 'shared-object', uuid: bytesOf(v, 0, UUID_SIZE) }),
    (p, v) => {
      const { uuid } = p;
      if (uuid.length !== UUID_SIZE) throw new RangeError(`a UUID has ${UUID_SIZE} bytes, not ${uuid.length}`);
      new Uint8Array(v.buffer, v.byteOffset, UUID_SIZE).set(uuid);
    },
  ),
  'device-state': fixed(
    8,
    (v) => ({ kind: 'device-state', direction: u32(v, 0), phase: u32(v, 4) }),
    (p, v) => {
      const d = p;
      setUint(v, 0, d.direction, 32, 'transfer direction');
      setUint(v, 4, d.phase, 32, 'migration phase');
    },
  ),
  opaque: {
    fits: (n) => n > 0 && n <= MAX_PAYLOAD_SIZE,
    sizes: () => `1 to ${MAX_PAYLOAD_SIZE} bytes`,
    decode: (v) => ({ kind: 'opaque', bytes: bytesOf(v, 0, v.byteLength) }),
    length: (p) => p.bytes.length,
    encode(p, v) {
      const { bytes } = p;
      if (bytes.length === 0 || bytes.length > MAX_PAYLOAD_SIZE) {
        throw new RangeError(`opaque payload of ${bytes.length} bytes is outside 1..${MAX_PAYLOAD_SIZE}`);
      }
      new Uint8Array(v.buffer, v.byteOffset, bytes.length).set(bytes);
    },
  },
};

/**
 * The layout of `kind`, widened for dispatch on a runtime kind. Sound because LAYOUTS maps
 * each kind to the layout of that kind's payload and callers pass a payload of `kind`;
 * TypeScript cannot correlate the two through the union.
 */
function layoutOf(kind: PayloadKind): Layout<PayloadKind> {
  return LAYOUTS[kind] as unknown as Layout<PayloadKind>;
}

/**
 * Decode `v` as the first of `kinds` its size fits (a request type may have alternative
 * layouts told apart by size, e.g. SET_LOG_BASE's u64 or log description).
 */
export function decodePayload(kinds: readonly PayloadKind[], v: DataView, o: LayoutOptions): Payload | PayloadViolation {
  for (const kind of kinds) {
    const layout = layoutOf(kind);
    if (layout.fits(v.byteLength, o)) return layout.decode(v, o);
  }
  const expected = kinds.map((k) => `${k} (${LAYOUTS[k].sizes(o)})`).join(' or ');
  return { rule: 'payload-size', detail: `payload of ${v.byteLength} bytes is not ${expected}` };
}

export function payloadLength(p: Payload, o: LayoutOptions): number {
  const layout = layoutOf(p.kind);
  return layout.length(p, o);
}

/** Write `p` into `v`, which is exactly payloadLength(p) bytes of zeros. Throws RangeError on values that do not fit. */
export function encodePayload(p: Payload, v: DataView, o: LayoutOptions): void {
  const layout = layoutOf(p.kind);
  layout.encode(p, v, o);
}

export { isViolation };
