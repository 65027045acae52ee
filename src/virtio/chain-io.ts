/**
 * Sequential access to a validated descriptor chain, in the manner of crosvm's Reader/Writer:
 * a device reads a request from the device-readable part and writes its answer into the
 * device-writable part without caring where one descriptor ends and the next begins.
 * Nothing here can reach outside the chain: every segment was checked by ChainBuilder.
 *
 * A reader or writer may carry a liveness check: once it fails (the device was reset while the
 * request was in flight), every access is dropped, so late completions never touch guest memory.
 */
import type { DescriptorChain } from './queue.ts';

/** Whether the request a reader or writer belongs to may still touch guest memory. */
export type LivenessCheck = () => boolean;

const ALWAYS_LIVE: LivenessCheck = () => true;

/** Cursor over an ordered list of byte segments. */
class Cursor {
  private seg = 0;
  private off = 0;
  private left: number;

  constructor(
    private readonly segs: readonly Uint8Array[],
    total: number,
    private readonly live: LivenessCheck,
  ) {
    this.left = total;
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
    while (want > 0) {
      const s = this.segs[this.seg];
      const avail = s.length - this.off;
      if (avail === 0) {
        this.seg++;
        this.off = 0;
        continue;
      }
      const k = Math.min(avail, want);
      out.push(s.subarray(this.off, this.off + k));
      this.off += k;
      want -= k;
    }
    return out;
  }
}

export class ChainReader {
  private readonly cursor: Cursor;

  constructor(chain: DescriptorChain, live: LivenessCheck = ALWAYS_LIVE) {
    this.cursor = new Cursor(chain.readable, chain.readableLength, live);
  }

  /** Device-readable bytes not consumed yet. */
  get remaining(): number {
    return this.cursor.remaining;
  }

  /** Copy the next bytes into `dst`; returns how many were copied (less than dst.length at the end). */
  read(dst: Uint8Array): number {
    let at = 0;
    for (const s of this.cursor.take(dst.length)) {
      dst.set(s, at);
      at += s.length;
    }
    return at;
  }

  /** The next `n` bytes as a fresh copy, or undefined when fewer remain (consuming nothing) or the request died. */
  readExact(n: number): Uint8Array | undefined {
    if (n > this.remaining) return undefined;
    const out = new Uint8Array(n);
    return this.read(out) === n ? out : undefined;
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
  private readonly cursor: Cursor;
  private count = 0;

  constructor(chain: DescriptorChain, live: LivenessCheck = ALWAYS_LIVE) {
    this.cursor = new Cursor(chain.writable, chain.writableLength, live);
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
    let at = 0;
    for (const s of this.cursor.take(src.length)) {
      s.set(src.subarray(at, at + s.length));
      at += s.length;
    }
    this.count += at;
    return at;
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
    if (chain.writableLength < n || chain.writable.length === 0) return undefined;
    const last = chain.writable[chain.writable.length - 1];
    return last.length >= n ? last.subarray(last.length - n) : undefined;
  }
}
