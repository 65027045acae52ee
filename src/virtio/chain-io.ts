/**
 * Sequential access to a validated descriptor chain, in the manner of crosvm's Reader/Writer:
 * a device reads a request from the device-readable part and writes its answer into the
 * device-writable part without caring where one descriptor ends and the next begins.
 * Nothing here can reach outside the chain: every segment was checked by ChainBuilder.
 *
 * A reader or writer may carry a liveness check: once it fails (the device was reset while the
 * request was in flight), every access is dropped, so late completions never touch guest memory.
 */
import { ChainSegments, type DescriptorChain } from './queue.ts';

/** Whether the request a reader or writer belongs to may still touch guest memory. */
export type LivenessCheck = () => boolean;

const ALWAYS_LIVE: LivenessCheck = () => true;
const NO_SEGMENTS = new ChainSegments();
const NO_BYTES = new Uint8Array(0);
/** Copies up to this many bytes go byte by byte (request and frame headers are 8 to 64 bytes). */
const SMALL_COPY = 64;

/**
 * Cursor over a run of a chain's segments (ChainSegments: spans of guest memory). Copies walk
 * the spans in place; only `take` and `view`, which hand views out, allocate.
 */
class Cursor {
  private segs: ChainSegments = NO_SEGMENTS;
  /** The segment the cursor is in, and how far into it. */
  private seg = 0;
  private off = 0;
  /** One past the last segment of the run. */
  private end = 0;
  private left = 0;
  private live: LivenessCheck = ALWAYS_LIVE;

  /** Start over on segments [first, end) of a chain (cursors are reused from request to request). */
  reset(segs: ChainSegments, first: number, end: number, total: number, live: LivenessCheck): void {
    this.segs = segs;
    this.seg = first;
    this.off = 0;
    this.end = end;
    this.left = total;
    this.live = live;
  }

  get remaining(): number {
    return this.left;
  }

  /** Zero-copy views covering the next `n` bytes (n <= remaining), advancing past them. */
  take(n: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    if (!this.live()) return out;
    let want = Math.min(n, this.left);
    this.left -= want;
    const { bytes, offsets, lengths } = this.segs;
    while (want > 0) {
      const avail = lengths[this.seg] - this.off;
      if (avail === 0) {
        this.seg++;
        this.off = 0;
        continue;
      }
      const k = Math.min(avail, want);
      const b = bytes[this.seg];
      out.push(new Uint8Array(b.buffer, b.byteOffset + offsets[this.seg] + this.off, k));
      this.off += k;
      want -= k;
    }
    return out;
  }

  /**
   * The bytes of the segment holding the next `n` bytes when they lie in one segment, with
   * `spanAt` set to where they start in it, advancing past them; else undefined and nothing
   * consumed. No view is made.
   */
  span(n: number): Uint8Array | undefined {
    if (n > this.left || !this.live()) return undefined;
    const { bytes, offsets, lengths } = this.segs;
    while (this.seg < this.end && this.off === lengths[this.seg]) {
      this.seg++;
      this.off = 0;
    }
    if (this.seg === this.end) {
      if (n !== 0) return undefined;
      this.spanAt = 0;
      return NO_BYTES;
    }
    if (lengths[this.seg] - this.off < n) return undefined;
    this.spanAt = offsets[this.seg] + this.off;
    this.off += n;
    this.left -= n;
    return bytes[this.seg];
  }

  /** Where the bytes the last span() found start in the segment's bytes. */
  spanAt = 0;

  /**
   * One view of the next `n` bytes when they lie in one segment (advancing past them), else
   * undefined and nothing consumed.
   */
  view(n: number): Uint8Array | undefined {
    const b = this.span(n);
    if (b === undefined) return undefined;
    if (b === NO_BYTES) return new Uint8Array(0);
    const at = this.spanAt;
    const cache = this.segs.cache;
    return cache === undefined ? new Uint8Array(b.buffer, b.byteOffset + at, n) : cache.view(b, at, n);
  }

  /**
   * Copy between the next bytes and `buf` (into `buf` when `out`), as many as both hold;
   * returns how many. Nothing is copied once the request died.
   */
  copy(buf: Uint8Array, out: boolean): number {
    if (!this.live()) return 0;
    const total = Math.min(buf.length, this.left);
    this.left -= total;
    const { bytes, offsets, lengths } = this.segs;
    let at = 0;
    while (at < total) {
      const avail = lengths[this.seg] - this.off;
      if (avail === 0) {
        this.seg++;
        this.off = 0;
        continue;
      }
      const k = Math.min(avail, total - at);
      const s = bytes[this.seg];
      const from = offsets[this.seg] + this.off;
      if (k <= SMALL_COPY) {
        // A header's worth: byte by byte, rather than a view allocated per request.
        if (out) for (let i = 0; i < k; i++) buf[at + i] = s[from + i];
        else for (let i = 0; i < k; i++) s[from + i] = buf[at + i];
      } else if (out) buf.set(new Uint8Array(s.buffer, s.byteOffset + from, k), at);
      else s.set(k === buf.length ? buf : buf.subarray(at, at + k), from);
      this.off += k;
      at += k;
    }
    return total;
  }
}

export class ChainReader {
  private readonly cursor = new Cursor();

  /** A reader of `chain`'s device-readable part; without a chain, one to reset() later. */
  constructor(chain?: DescriptorChain, live: LivenessCheck = ALWAYS_LIVE) {
    if (chain !== undefined) this.reset(chain, live);
  }

  /** Read `chain` from its start (readers are reused from request to request). */
  reset(chain: DescriptorChain, live: LivenessCheck = ALWAYS_LIVE): void {
    const segs = chain.segments;
    this.cursor.reset(segs, 0, segs.readableCount, chain.readableLength, live);
  }

  /** Device-readable bytes not consumed yet. */
  get remaining(): number {
    return this.cursor.remaining;
  }

  /** Copy the next bytes into `dst`; returns how many were copied (less than dst.length at the end). */
  read(dst: Uint8Array): number {
    return this.cursor.copy(dst, true);
  }

  /** The next `n` bytes as a fresh copy, or undefined when fewer remain (consuming nothing) or the request died. */
  readExact(n: number): Uint8Array | undefined {
    if (n > this.remaining) return undefined;
    const out = new Uint8Array(n);
    return this.read(out) === n ? out : undefined;
  }

  /**
   * The next `n` bytes without a copy: one view of guest memory when they lie in one descriptor,
   * else undefined (consuming nothing; read() them instead). The view is the driver's memory: use
   * it before the request completes and do not keep it.
   */
  view(n: number): Uint8Array | undefined {
    return this.cursor.view(n);
  }

  /**
   * The next `n` bytes in place, when they lie in one descriptor: the bytes of the guest memory
   * region holding them, with `spanAt` set to where they start there (advancing past them); else
   * undefined and nothing consumed (read() them instead). For a header decoded where it lies:
   * no copy and no view. Read only those `n` bytes, before the request completes.
   */
  span(n: number): Uint8Array | undefined {
    return this.cursor.span(n);
  }

  /** Where the bytes the last span() returned start. */
  get spanAt(): number {
    return this.cursor.spanAt;
  }

  /** Zero-copy views of the next `n` bytes (fewer at the end), e.g. for a vectored file write. */
  segments(n: number): Uint8Array[] {
    return this.cursor.take(n);
  }

  skip(n: number): void {
    this.cursor.take(n);
  }
}

export class ChainWriter {
  private readonly cursor = new Cursor();
  private count = 0;

  /** A writer of `chain`'s device-writable part; without a chain, one to reset() later. */
  constructor(chain?: DescriptorChain, live: LivenessCheck = ALWAYS_LIVE) {
    if (chain !== undefined) this.reset(chain, live);
  }

  /** Write `chain` from its start (writers are reused from request to request). */
  reset(chain: DescriptorChain, live: LivenessCheck = ALWAYS_LIVE): void {
    const segs = chain.segments;
    this.cursor.reset(segs, segs.readableCount, segs.count, chain.writableLength, live);
    this.count = 0;
  }

  /** Device-writable bytes still free. */
  get remaining(): number {
    return this.cursor.remaining;
  }

  /** Bytes written so far: the `len` of the used element (§2.7.8). */
  get written(): number {
    return this.count;
  }

  /** Copy `src` (or as much of it as fits) into the chain; returns how many bytes were written. */
  write(src: Uint8Array): number {
    const n = this.cursor.copy(src, false);
    this.count += n;
    return n;
  }

  /**
   * Zero-copy views of the next `n` writable bytes (fewer at the end), counted as written: the
   * caller fills them, e.g. with a vectored file read.
   */
  segments(n: number): Uint8Array[] {
    const segs = this.cursor.take(n);
    for (const s of segs) this.count += s.length;
    return segs;
  }

  /** Split off the last `n` writable bytes, e.g. a request's trailing status byte (virtio-blk §5.2.6). */
  static tail(chain: DescriptorChain, n: number): Uint8Array | undefined {
    const segs = chain.segments;
    const last = segs.count - 1;
    if (chain.writableLength < n || last < segs.readableCount || segs.lengths[last] < n) return undefined;
    const b = segs.bytes[last];
    return new Uint8Array(b.buffer, b.byteOffset + segs.offsets[last] + segs.lengths[last] - n, n);
  }
}
