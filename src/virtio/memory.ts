/**
 * Guest physical memory: a set of regions, each mapping a guest-physical range onto host bytes
 * (an ArrayBuffer, a SharedArrayBuffer, or an mmap'd memfd viewed as an ArrayBuffer).
 *
 * Addresses are JavaScript numbers. A guest-physical address on any real platform is below
 * 2^52 (x86-64 and arm64 top out there), so every mappable byte has an exact number; regions
 * are refused unless they end at or below 2^53. A 64-bit address read from a ring whose value
 * is 2^53 or more may lose precision when converted, but it is still >= 2^53 and so lies outside
 * every region: translation fails, which is the only correct answer for such an address.
 * Numbers instead of bigint keep the per-descriptor path free of allocation.
 */

/** The first address no region may reach: see the module comment. */
export const ADDRESS_LIMIT = 2 ** 53;

export interface MemoryRegion {
  /** First guest-physical address of the region. */
  readonly guestAddr: number;
  /** Host bytes backing the region; its length is the region's size. */
  readonly bytes: Uint8Array;
  /**
   * Give the host memory behind [offset, offset+length) of `bytes` back to the host (madvise
   * MADV_REMOVE on a shared mapping, a hole punched in its file); the range reads as zeros
   * afterwards. Without it, GuestMemory.discard zero-fills: the contract holds, nothing is freed.
   */
  readonly discard?: (offset: number, length: number) => void;
}

/** A guest access outside every region: a driver error, never a host crash. */
export class GuestMemoryError extends Error {
  constructor(
    readonly addr: number,
    readonly len: number,
  ) {
    super(`guest memory access outside every region: ${len} bytes at 0x${addr.toString(16)}`);
    this.name = 'GuestMemoryError';
  }
}

/** Combine the two 32-bit halves of a little-endian 64-bit guest address (see module comment). */
export function addr64(lo: number, hi: number): number {
  return hi * 0x1_0000_0000 + lo;
}

/** A region as GuestMemory.locate() answers: its host bytes and where they start in guest-physical space. */
export interface RegionSpan {
  readonly start: number;
  readonly bytes: Uint8Array;
}

interface Region extends RegionSpan {
  start: number;
  end: number;
  bytes: Uint8Array;
  /**
   * `bytes`' buffer and offset, read once: a view made with the Uint8Array constructor from
   * these costs half of `bytes.subarray()` (no species lookup, no getters), for every view handed out.
   */
  buffer: ArrayBufferLike;
  byteOffset: number;
  view: DataView;
  discard: ((offset: number, length: number) => void) | undefined;
}

export class GuestMemory {
  private readonly regions: Region[];
  private last: Region;

  constructor(regions: readonly MemoryRegion[]) {
    if (regions.length === 0) throw new RangeError('guest memory needs at least one region');
    const sorted = regions
      .map((r) => {
        if (!Number.isSafeInteger(r.guestAddr) || r.guestAddr < 0) {
          throw new RangeError(`region start ${r.guestAddr} is not a non-negative integer`);
        }
        const end = r.guestAddr + r.bytes.length;
        if (r.bytes.length === 0 || end > ADDRESS_LIMIT) {
          throw new RangeError(`region at 0x${r.guestAddr.toString(16)} has a bad size ${r.bytes.length}`);
        }
        return {
          start: r.guestAddr,
          end,
          bytes: r.bytes,
          buffer: r.bytes.buffer,
          byteOffset: r.bytes.byteOffset,
          view: new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength),
          discard: r.discard,
        };
      })
      .sort((a, b) => a.start - b.start);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i].start < sorted[i - 1].end) {
        throw new RangeError(`regions overlap at 0x${sorted[i].start.toString(16)}`);
      }
    }
    this.regions = sorted;
    this.last = sorted[0];
  }

  /** One contiguous region of `size` bytes of fresh (non-shared) memory at `guestAddr`. */
  static allocate(size: number, guestAddr = 0): GuestMemory {
    return new GuestMemory([{ guestAddr, bytes: new Uint8Array(size) }]);
  }

  /** The regions, in address order. */
  get layout(): readonly MemoryRegion[] {
    return this.regions.map((r) => ({ guestAddr: r.start, bytes: r.bytes, discard: r.discard }));
  }

  /** Bytes of guest RAM in all regions. */
  get size(): number {
    return this.regions.reduce((n, r) => n + (r.end - r.start), 0);
  }

  /**
   * Release the host memory behind [addr, addr+len), which must lie in one region; it reads as
   * zeros afterwards (a balloon's inflated or reported pages, §5.5.6). Throws GuestMemoryError
   * when any byte lies outside guest memory.
   */
  discard(addr: number, len: number): void {
    const r = this.region(addr, len);
    const offset = addr - r.start;
    if (r.discard !== undefined) r.discard(offset, len);
    else r.bytes.fill(0, offset, offset + len);
  }

  /**
   * The guest-physical address of `view`, a view this memory handed out (a descriptor's buffer in
   * a DescriptorChain), or undefined when it is not a view of any region.
   */
  addressOf(view: Uint8Array): number | undefined {
    for (const r of this.regions) {
      const at = view.byteOffset - r.byteOffset;
      if (view.buffer === r.buffer && at >= 0 && at + view.length <= r.end - r.start) return r.start + at;
    }
    return undefined;
  }

  /**
   * The region holding all of [addr, addr+len), or undefined. A range that straddles two
   * regions is refused even when they are adjacent: one descriptor is one host mapping.
   */
  private find(addr: number, len: number): Region | undefined {
    // `addr < end` with len <= end - addr rejects negative, NaN, huge and overflowing ranges alike.
    const last = this.last;
    if (addr >= last.start && addr < last.end && len >= 0 && len <= last.end - addr) return last;
    const rs = this.regions;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = rs[mid];
      if (addr < r.start) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else {
        if (len >= 0 && len <= r.end - addr) {
          this.last = r;
          return r;
        }
        return undefined;
      }
    }
    return undefined;
  }

  contains(addr: number, len: number): boolean {
    return this.find(addr, len) !== undefined;
  }

  /**
   * The region holding all of [addr, addr+len): its bytes and first guest-physical address, so
   * that the range is `bytes` from `addr - start`; undefined when any byte lies outside guest
   * memory. Nothing is allocated (descriptor chains keep such spans instead of views).
   */
  locate(addr: number, len: number): RegionSpan | undefined {
    return this.find(addr, len);
  }

  /** A zero-copy view of [addr, addr+len), or undefined when any byte lies outside guest memory. */
  trySlice(addr: number, len: number): Uint8Array | undefined {
    const r = this.find(addr, len);
    if (r === undefined) return undefined;
    // find() checked that [addr, addr+len) lies in the region, so the view stays inside `bytes`.
    return new Uint8Array(r.buffer, r.byteOffset + (addr - r.start), len);
  }

  /** A zero-copy view of [addr, addr+len); throws GuestMemoryError when outside guest memory. */
  slice(addr: number, len: number): Uint8Array {
    const s = this.trySlice(addr, len);
    if (s === undefined) throw new GuestMemoryError(addr, len);
    return s;
  }

  /** A DataView of [addr, addr+len) for ring fields (little-endian accessors); throws when outside. */
  view(addr: number, len: number): DataView {
    const r = this.find(addr, len);
    if (r === undefined) throw new GuestMemoryError(addr, len);
    return new DataView(r.bytes.buffer, r.bytes.byteOffset + (addr - r.start), len);
  }

  read(addr: number, dst: Uint8Array): void {
    dst.set(this.slice(addr, dst.length));
  }

  write(addr: number, src: Uint8Array): void {
    this.slice(addr, src.length).set(src);
  }

  readU16(addr: number): number {
    const r = this.region(addr, 2);
    return r.view.getUint16(addr - r.start, true);
  }

  readU32(addr: number): number {
    const r = this.region(addr, 4);
    return r.view.getUint32(addr - r.start, true);
  }

  readU64(addr: number): bigint {
    const r = this.region(addr, 8);
    return r.view.getBigUint64(addr - r.start, true);
  }

  writeU16(addr: number, v: number): void {
    const r = this.region(addr, 2);
    r.view.setUint16(addr - r.start, v, true);
  }

  writeU32(addr: number, v: number): void {
    const r = this.region(addr, 4);
    r.view.setUint32(addr - r.start, v, true);
  }

  writeU64(addr: number, v: bigint): void {
    const r = this.region(addr, 8);
    r.view.setBigUint64(addr - r.start, v, true);
  }

  private region(addr: number, len: number): Region {
    const r = this.find(addr, len);
    if (r === undefined) throw new GuestMemoryError(addr, len);
    return r;
  }
}

/** Views a ViewCache keeps: a power of two, about the buffers a busy driver cycles through. */
const VIEW_CACHE_ENTRIES = 2048;

/**
 * Views of guest memory handed out before, found again by what they cover: the same bytes, offset
 * and length give the same `Uint8Array`, so a device that lends a view of each request's data (a
 * transmitted frame, net/port.ts) allocates none for a buffer a driver uses again, which drivers
 * do: DPDK's mbufs and a pool's buffers come back at the same addresses. A view is an immutable
 * window on memory that does not change under it, so handing one out twice is safe; the cache is
 * direct-mapped (a new view replaces the one in its entry) and holds its arrays only once used.
 */
export class ViewCache {
  private views: (Uint8Array | undefined)[] | undefined;
  private bytes: (Uint8Array | undefined)[] = [];
  private offsets = new Float64Array(0);

  /** A view of `length` bytes at `offset` of `bytes`, which the caller checked lie inside it. */
  view(bytes: Uint8Array, offset: number, length: number): Uint8Array {
    let views = this.views;
    if (views === undefined) {
      views = this.views = new Array<Uint8Array | undefined>(VIEW_CACHE_ENTRIES).fill(undefined);
      this.bytes = new Array<Uint8Array | undefined>(VIEW_CACHE_ENTRIES).fill(undefined);
      this.offsets = new Float64Array(VIEW_CACHE_ENTRIES);
    }
    // Fibonacci hashing of the offset: buffers a fixed stride apart spread over the entries.
    const e = Math.imul(offset + length, 0x9e3779b1) >>> (32 - VIEW_CACHE_BITS);
    const cached = views[e];
    if (cached !== undefined && this.offsets[e] === offset && cached.length === length && this.bytes[e] === bytes) return cached;
    const v = new Uint8Array(bytes.buffer, bytes.byteOffset + offset, length);
    views[e] = v;
    this.bytes[e] = bytes;
    this.offsets[e] = offset;
    return v;
  }
}

const VIEW_CACHE_BITS = Math.log2(VIEW_CACHE_ENTRIES);

