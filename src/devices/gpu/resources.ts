/**
 * 2D resources (§5.7.6.8 RESOURCE_CREATE_2D ... RESOURCE_UNREF): a host copy of the image, in the
 * resource's own pixel format, and the guest pages backing it (a scatter list). The host copy is
 * what the device shows; TRANSFER_TO_HOST_2D fills it from the backing.
 *
 * Every number here comes from the driver. Backing entries are checked against guest memory when
 * attached and looked up again at each transfer (the guest's memory map may change under a
 * vhost-user front-end), so a copy never reaches outside guest RAM.
 */
import type { GuestMemory } from '../../virtio/memory.ts';
import { BYTES_PER_PIXEL, type GpuRect, type PixelLayout } from './wire.ts';

/** One scatter list entry, checked to lie inside guest RAM when attached. */
export interface MemEntry {
  readonly addr: number;
  readonly length: number;
}

/** A backing scatter list and where each entry starts in the backing's byte space. */
export class Backing {
  readonly starts: number[] = [];
  readonly total: number;

  constructor(readonly entries: readonly MemEntry[]) {
    let at = 0;
    for (const e of entries) {
      this.starts.push(at);
      at += e.length;
    }
    this.total = at;
  }

  /**
   * Copies backing bytes [offset, offset + dst.length) into `dst`. False when the range leaves
   * the backing or an entry is no longer guest memory (nothing is read past that point).
   */
  read(memory: GuestMemory, offset: number, dst: Uint8Array): boolean {
    if (offset + dst.length > this.total) return false;
    let i = this.entryAt(offset);
    let inner = offset - this.starts[i]!;
    let done = 0;
    while (done < dst.length) {
      const e = this.entries[i]!;
      const n = Math.min(e.length - inner, dst.length - done);
      if (n > 0) {
        const src = memory.trySlice(e.addr + inner, n);
        if (src === undefined) return false;
        dst.set(src, done);
        done += n;
      }
      i++;
      inner = 0;
    }
    return true;
  }

  /** The index of the entry holding byte `offset` (< total): the last entry starting at or before it. */
  private entryAt(offset: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

export class Resource {
  /** The host copy, width × height pixels of 4 bytes in the resource's format, rows packed. */
  readonly pixels: Uint8Array;
  backing: Backing | undefined;

  constructor(
    readonly id: number,
    readonly format: number,
    readonly layout: PixelLayout,
    readonly width: number,
    readonly height: number,
  ) {
    this.pixels = new Uint8Array(width * height * BYTES_PER_PIXEL);
  }

  get stride(): number {
    return this.width * BYTES_PER_PIXEL;
  }

  /** Whether `r` lies inside the resource (no arithmetic can wrap: fields are 32-bit). */
  contains(r: GpuRect): boolean {
    return r.x + r.width <= this.width && r.y + r.height <= this.height;
  }

  /**
   * TRANSFER_TO_HOST_2D: row h of `r` comes from backing offset `offset + h * stride` (the
   * backing is laid out like the resource; `offset` is where the rectangle's first pixel sits).
   * False when a row would leave the backing or guest memory.
   */
  transferFromBacking(memory: GuestMemory, r: GpuRect, offset: number): boolean {
    const backing = this.backing;
    if (backing === undefined) return false;
    if (r.width === 0 || r.height === 0) return true;
    const rowBytes = r.width * BYTES_PER_PIXEL;
    if (offset + (r.height - 1) * this.stride + rowBytes > backing.total) return false;
    for (let h = 0; h < r.height; h++) {
      const dst = (r.y + h) * this.stride + r.x * BYTES_PER_PIXEL;
      if (!backing.read(memory, offset + h * this.stride, this.pixels.subarray(dst, dst + rowBytes))) return false;
    }
    return true;
  }

  /**
   * Converts the resource rectangle `r` to RGBA into `out` (a `outWidth`-pixel-wide RGBA image)
   * at (dx, dy). `opaque` forces alpha to 255, as a scanout shows no transparency.
   */
  toRgba(r: GpuRect, out: Uint8Array, outWidth: number, dx: number, dy: number, opaque: boolean): void {
    const { r: ri, g: gi, b: bi, a: ai } = this.layout;
    const src = this.pixels;
    for (let y = 0; y < r.height; y++) {
      let s = ((r.y + y) * this.width + r.x) * BYTES_PER_PIXEL;
      let d = ((dy + y) * outWidth + dx) * 4;
      for (let x = 0; x < r.width; x++, s += 4, d += 4) {
        out[d] = src[s + ri]!;
        out[d + 1] = src[s + gi]!;
        out[d + 2] = src[s + bi]!;
        out[d + 3] = opaque || ai < 0 ? 0xff : src[s + ai]!;
      }
    }
  }
}
