/**
 * Drawing what QXL drawables describe into surfaces that live in the device's BAR memory, as
 * spice-server's software canvas does for QEMU: the primary surface is the driver's own buffer
 * (create_surface.mem), so a drawable lands in guest-visible memory and a snapshot reads it back.
 *
 * Surfaces are 32 bits per pixel, x8r8g8b8 / a8r8g8b8 little-endian (bytes B, G, R, X). A
 * positive stride puts row 0 first; a negative one stores the rows bottom-up (row 0 last).
 *
 * Everything read from guest memory is bounded: a chunk list is followed for at most the bytes
 * the reader needs and MAX_CHUNKS links, so a loop or a short list is a GuestBug, not a hang.
 */
import { BITMAP_TOP_DOWN, BitmapFormat, Chunk, type Rect, RECT_SIZE, readRect } from './wire.ts';
import type { Framebuffer } from '../display/framebuffer.ts';
import { GuestBug, type MemSlots } from './memslots.ts';

/** Widest and tallest surface or bitmap accepted (QEMU's qxl checks the same bound for the primary). */
export const MAX_DIMENSION = 16384;
/** Links a chunk list may have: Linux writes one chunk per image, clip list and cursor. */
export const MAX_CHUNKS = 1024;
/** Clip rectangles one drawable may carry. */
export const MAX_CLIP_RECTS = 4096;
/** Largest bitmap the device copies out of guest memory for one drawable. */
export const MAX_BITMAP_BYTES = 64 * 1024 * 1024;

export interface Surface {
  readonly width: number;
  readonly height: number;
  readonly stride: number;
  readonly format: number;
  readonly bytes: Uint8Array;
  /** Offset in `bytes` of the surface's first byte in memory. */
  readonly offset: number;
}

/** Offset in surface.bytes of row `y`. */
export function rowOffset(s: Surface, y: number): number {
  return s.offset + (s.stride > 0 ? y * s.stride : (s.height - 1 - y) * -s.stride);
}

/**
 * A surface of `width`×`height` 32-bit pixels with `stride` bytes per row at QXLPHYSICAL `mem`;
 * every byte of it inside one memslot.
 */
export function placeSurface(slots: MemSlots, mem: bigint, width: number, height: number, stride: number, format: number, what: string): Surface {
  if (width < 1 || height < 1 || width > MAX_DIMENSION || height > MAX_DIMENSION) throw new GuestBug(`${what} of ${width}x${height} pixels is empty or larger than ${MAX_DIMENSION}x${MAX_DIMENSION}`);
  if (Math.abs(stride) < width * 4) throw new GuestBug(`${what} stride ${stride} is smaller than its ${width} pixels of 4 bytes`);
  const span = slots.span(mem, Math.abs(stride) * height, what);
  return { width, height, stride, format, bytes: span.bytes, offset: span.offset };
}

/** The intersection of two rectangles, or undefined when empty. */
export function intersect(a: Rect, b: Rect): Rect | undefined {
  const r = { top: Math.max(a.top, b.top), left: Math.max(a.left, b.left), bottom: Math.min(a.bottom, b.bottom), right: Math.min(a.right, b.right) };
  return r.top < r.bottom && r.left < r.right ? r : undefined;
}

/**
 * `need` bytes of the chunk list starting at QXLPHYSICAL `address` (struct qxl_data_chunk:
 * data_size, prev, next, data), copied out in order.
 */
export function readChunks(slots: MemSlots, address: bigint, need: number, what: string): Uint8Array {
  const out = new Uint8Array(need);
  let filled = 0;
  let at = address;
  for (let links = 0; filled < need; links++) {
    if (at === 0n) throw new GuestBug(`${what} ends after ${filled} of ${need} bytes`);
    if (links >= MAX_CHUNKS) throw new GuestBug(`${what} has more than ${MAX_CHUNKS} chunks (a loop?)`);
    const head = slots.span(at, Chunk.DATA, `${what} chunk`);
    const size = head.view.getUint32(head.offset + Chunk.DATA_SIZE, true);
    const next = head.view.getBigUint64(head.offset + Chunk.NEXT, true);
    const take = Math.min(size, need - filled);
    const data = slots.span(at + BigInt(Chunk.DATA), take, `${what} chunk data`);
    out.set(data.bytes.subarray(data.offset, data.offset + take), filled);
    filled += take;
    at = next;
  }
  return out;
}

/** The clip rectangles of struct qxl_clip_rects at `address`. */
export function readClipRects(slots: MemSlots, address: bigint): Rect[] {
  const head = slots.span(address, 4, 'clip rects');
  const count = head.view.getUint32(head.offset, true);
  if (count > MAX_CLIP_RECTS) throw new GuestBug(`${count} clip rectangles exceed ${MAX_CLIP_RECTS}`);
  const bytes = readChunks(slots, address + 4n, count * RECT_SIZE, 'clip rects');
  const view = new DataView(bytes.buffer);
  return Array.from({ length: count }, (_, i) => readRect(view, i * RECT_SIZE));
}

/** Clip rectangles may overlap, but one drawable may not paint more than this many surfaces' worth of pixels. */
export const MAX_OVERDRAW = 4;

/**
 * The areas of `surface` a drawable with bounding box `bbox` and clip `clips` (none: the whole
 * box) touches. Overlapping clips are drawn once each, so their total is bounded: thousands of
 * full-surface clips would keep the process busy for minutes.
 */
export function drawnAreas(surface: Surface, bbox: Rect, clips: readonly Rect[] | undefined): Rect[] {
  const bounds = { top: 0, left: 0, bottom: surface.height, right: surface.width };
  const box = intersect(bbox, bounds);
  if (box === undefined) return [];
  if (clips === undefined) return [box];
  const areas = clips.map((c) => intersect(c, box)).filter((r): r is Rect => r !== undefined);
  const pixels = areas.reduce((n, r) => n + (r.bottom - r.top) * (r.right - r.left), 0);
  if (pixels > MAX_OVERDRAW * surface.width * surface.height) throw new GuestBug(`${clips.length} clip rectangles paint ${pixels} pixels, more than ${MAX_OVERDRAW} times the surface`);
  return areas;
}

/**
 * A drawable's areas painted a band of rows at a time, so that one drawable painting several
 * large surfaces' worth of pixels can be spread over turns of the event loop. `row` paints
 * columns [left, right) of row y; `painted` hears of each band once it is done.
 */
export class Painting {
  private index = 0;
  private y: number;

  constructor(
    private readonly areas: readonly Rect[],
    private readonly row: (y: number, left: number, right: number) => void,
    private readonly painted: (band: Rect) => void,
  ) {
    this.y = areas[0]?.top ?? 0;
  }

  get done(): boolean {
    return this.index >= this.areas.length;
  }

  /** Paint whole rows until at least `budget` pixels are done, or all are; returns the pixels painted. */
  paint(budget: number): number {
    let pixels = 0;
    while (!this.done && pixels < budget) {
      const a = this.areas[this.index];
      const top = this.y;
      let y = top;
      for (; y < a.bottom && pixels < budget; y++) {
        this.row(y, a.left, a.right);
        pixels += a.right - a.left;
      }
      this.painted({ top, left: a.left, bottom: y, right: a.right });
      if (y < a.bottom) {
        this.y = y;
      } else {
        this.index++;
        this.y = this.areas[this.index]?.top ?? 0;
      }
    }
    return pixels;
  }
}

/** QXL_DRAW_FILL with a solid brush and OP_PUT: `color` (x8r8g8b8) over each area. */
export function fill(surface: Surface, areas: readonly Rect[], color: number, painted: (band: Rect) => void): Painting {
  const pixel = new Uint8Array(4);
  new DataView(pixel.buffer).setUint32(0, color >>> 0, true);
  const bytes = surface.bytes;
  return new Painting(areas, (y, left, right) => {
    // One pixel written, then the filled part of the row doubled until the row is full.
    const start = rowOffset(surface, y) + 4 * left;
    const end = start + 4 * (right - left);
    bytes.set(pixel, start);
    for (let filled = start + 4; filled < end; filled += Math.min(filled - start, end - filled)) bytes.copyWithin(filled, start, start + Math.min(filled - start, end - filled));
  }, painted);
}

/** A bitmap copied out of guest memory (struct qxl_bitmap and its data chunks). */
export interface Bitmap {
  readonly format: number;
  readonly width: number;
  readonly height: number;
  readonly stride: number;
  readonly topDown: boolean;
  readonly data: Uint8Array;
}

const BYTES_PER_PIXEL: ReadonlyMap<number, number> = new Map([
  [BitmapFormat.BIT_16, 2],
  [BitmapFormat.BIT_24, 3],
  [BitmapFormat.BIT_32, 4],
  [BitmapFormat.RGBA, 4],
]);

/** Check a bitmap's header and copy its pixels: `height` rows of `stride` bytes from the chunk list at `data`. */
export function readBitmap(slots: MemSlots, format: number, flags: number, width: number, height: number, stride: number, data: bigint): Bitmap {
  const bpp = BYTES_PER_PIXEL.get(format);
  if (bpp === undefined) throw new GuestBug(`bitmap format ${format} is not supported (16, 24 and 32 bits are)`);
  if (width < 1 || height < 1 || width > MAX_DIMENSION || height > MAX_DIMENSION) throw new GuestBug(`bitmap of ${width}x${height} pixels is empty or too large`);
  if (stride < width * bpp) throw new GuestBug(`bitmap stride ${stride} is smaller than ${width} pixels of ${bpp} bytes`);
  if (stride * height > MAX_BITMAP_BYTES) throw new GuestBug(`bitmap of ${stride * height} bytes exceeds ${MAX_BITMAP_BYTES}`);
  // The last row needs only its pixels, not a whole stride.
  const bytes = readChunks(slots, data, stride * (height - 1) + width * bpp, 'bitmap');
  return { format, width, height, stride, topDown: (flags & BITMAP_TOP_DOWN) !== 0, data: bytes };
}

/** Pixel (x, y) of `b` as x8r8g8b8. */
function bitmapPixel(b: Bitmap, x: number, y: number): number {
  const row = (b.topDown ? y : b.height - 1 - y) * b.stride;
  const d = b.data;
  switch (b.format) {
    case BitmapFormat.BIT_16: {
      const v = d[row + 2 * x] | (d[row + 2 * x + 1] << 8);
      const expand = (c: number): number => (c << 3) | (c >> 2);
      return (expand((v >> 10) & 0x1f) << 16) | (expand((v >> 5) & 0x1f) << 8) | expand(v & 0x1f);
    }
    case BitmapFormat.BIT_24:
      return (d[row + 3 * x + 2] << 16) | (d[row + 3 * x + 1] << 8) | d[row + 3 * x];
    default:
      return ((d[row + 4 * x + 3] << 24) | (d[row + 4 * x + 2] << 16) | (d[row + 4 * x + 1] << 8) | d[row + 4 * x]) >>> 0;
  }
}

/**
 * QXL_DRAW_COPY with OP_PUT: `src` (an area of the bitmap) stretched over `bbox`, drawn where
 * `areas` allow. Equal sizes copy pixel for pixel; others scale by nearest neighbour.
 */
export function copy(surface: Surface, areas: readonly Rect[], bbox: Rect, bitmap: Bitmap, src: Rect, painted: (band: Rect) => void): Painting {
  const whole = { top: 0, left: 0, bottom: bitmap.height, right: bitmap.width };
  const inside = intersect(src, whole);
  if (inside === undefined || inside.top !== src.top || inside.left !== src.left || inside.bottom !== src.bottom || inside.right !== src.right) {
    throw new GuestBug(`copy source area ${JSON.stringify(src)} is outside the ${bitmap.width}x${bitmap.height} bitmap`);
  }
  const dw = bbox.right - bbox.left;
  const dh = bbox.bottom - bbox.top;
  const sw = src.right - src.left;
  const sh = src.bottom - src.top;
  const view = new DataView(surface.bytes.buffer, surface.bytes.byteOffset, surface.bytes.byteLength);
  return new Painting(areas, (y, left, right) => {
    const sy = src.top + Math.floor(((y - bbox.top) * sh) / dh);
    const row = rowOffset(surface, y);
    for (let x = left; x < right; x++) {
      const sx = src.left + Math.floor(((x - bbox.left) * sw) / dw);
      view.setUint32(row + 4 * x, bitmapPixel(bitmap, sx, sy), true);
    }
  }, painted);
}

/**
 * Show `area` of `surface` in `fb` (RGBA, same size): x8r8g8b8 bytes B, G, R become R, G, B with
 * alpha opaque (an xRGB surface has no alpha to show).
 */
export function showIn(fb: Framebuffer, surface: Surface, area: Rect): void {
  const b = surface.bytes;
  const out = fb.pixels;
  for (let y = area.top; y < area.bottom; y++) {
    const row = rowOffset(surface, y);
    for (let x = area.left, o = (y * fb.width + x) * 4; x < area.right; x++, o += 4) {
      out[o] = b[row + 4 * x + 2];
      out[o + 1] = b[row + 4 * x + 1];
      out[o + 2] = b[row + 4 * x];
      out[o + 3] = 0xff;
    }
  }
}
