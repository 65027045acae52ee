/**
 * What a display device shows: an RGBA image (8 bits a channel, row-major, no padding) that a
 * device writes into and anyone can look at — as PNG on demand, or as the rectangles changed since
 * the last look (for a viewer that streams updates). Shared by every paravirt display (virtio-gpu
 * scanouts, the QXL primary surface); it knows nothing of either.
 */
import { PNG } from 'pngjs';

/** A rectangle in pixels: x, y of the top-left corner, width and height. */
export interface Rect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** Largest side accepted: far beyond any real display, and small enough that width*height*4 is exact. */
export const MAX_FRAMEBUFFER_SIDE = 16384;

export class Framebuffer {
  /** RGBA, width*height*4 bytes, opaque black at creation. */
  readonly pixels: Uint8Array;
  private dirtyRects: Rect[] = [];
  private readonly listeners = new Set<(rect: Rect) => void>();

  constructor(
    readonly width: number,
    readonly height: number,
  ) {
    if (!isSide(width) || !isSide(height)) {
      throw new RangeError(`framebuffer size ${width}x${height} is not between 1x1 and ${MAX_FRAMEBUFFER_SIDE}x${MAX_FRAMEBUFFER_SIDE}`);
    }
    this.pixels = new Uint8Array(width * height * 4);
    for (let i = 3; i < this.pixels.length; i += 4) this.pixels[i] = 0xff;
  }

  /** `rect` clipped to the framebuffer, or undefined when nothing of it is inside. */
  clip(rect: Rect): Rect | undefined {
    const x0 = Math.max(0, rect.x);
    const y0 = Math.max(0, rect.y);
    const x1 = Math.min(this.width, rect.x + rect.width);
    const y1 = Math.min(this.height, rect.y + rect.height);
    if (x1 <= x0 || y1 <= y0) return undefined;
    return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
  }

  /** Records that `rect` (clipped) changed and tells the listeners. */
  markDirty(rect: Rect): void {
    const clipped = this.clip(rect);
    if (!clipped) return;
    this.dirtyRects.push(clipped);
    // A viewer that never looks must not make the list grow without bound: past a few hundred
    // rectangles the whole screen is as good an answer.
    if (this.dirtyRects.length > 256) this.dirtyRects = [{ x: 0, y: 0, width: this.width, height: this.height }];
    for (const listener of this.listeners) listener(clipped);
  }

  /** The rectangles changed since the last call (possibly overlapping), and forgets them. */
  takeDirty(): Rect[] {
    const rects = this.dirtyRects;
    this.dirtyRects = [];
    return rects;
  }

  /** Calls `listener` with each rectangle marked dirty; returns the function that stops it. */
  onDirty(listener: (rect: Rect) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Fills `rect` (clipped) with one colour, without marking it dirty. */
  fill(rect: Rect, r: number, g: number, b: number, a = 0xff): void {
    const c = this.clip(rect);
    if (!c) return;
    for (let y = c.y; y < c.y + c.height; y++) {
      for (let o = (y * this.width + c.x) * 4, end = o + c.width * 4; o < end; o += 4) {
        this.pixels[o] = r;
        this.pixels[o + 1] = g;
        this.pixels[o + 2] = b;
        this.pixels[o + 3] = a;
      }
    }
  }

  /** The RGBA bytes of the pixel at (x, y). */
  pixel(x: number, y: number): [number, number, number, number] {
    if (!Number.isInteger(x) || !Number.isInteger(y) || x < 0 || y < 0 || x >= this.width || y >= this.height) {
      throw new RangeError(`pixel (${x}, ${y}) is outside the ${this.width}x${this.height} framebuffer`);
    }
    const o = (y * this.width + x) * 4;
    return [this.pixels[o]!, this.pixels[o + 1]!, this.pixels[o + 2]!, this.pixels[o + 3]!];
  }

  /** The whole framebuffer as a PNG file (8-bit RGBA). */
  toPng(): Buffer {
    return encodePng(this.width, this.height, this.pixels);
  }
}

/** Encodes width*height RGBA pixels as a PNG file. */
export function encodePng(width: number, height: number, rgba: Uint8Array): Buffer {
  const png = new PNG({ width, height, colorType: 6, inputColorType: 6, bitDepth: 8, inputHasAlpha: true });
  png.data = Buffer.from(rgba.buffer, rgba.byteOffset, width * height * 4);
  return PNG.sync.write(png);
}

/** Decodes a PNG file into its size and RGBA pixels (for tests and tools comparing images). */
export function decodePng(file: Uint8Array): { width: number; height: number; pixels: Uint8Array } {
  const png = PNG.sync.read(Buffer.from(file.buffer, file.byteOffset, file.byteLength));
  return { width: png.width, height: png.height, pixels: new Uint8Array(png.data.buffer, png.data.byteOffset, png.data.byteLength) };
}

function isSide(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= MAX_FRAMEBUFFER_SIDE;
}
