/**
 * The guest's display over a WebSocket: the framebuffer of the first display device (virtio-gpu
 * scanout 0, or any device showing a Framebuffer, src/devices/display/framebuffer.ts) sent whole
 * once, then only the rectangles the device marks dirty. Binary messages, little-endian u32s:
 *
 *   [0, width, height]                      the display's size: the page sizes its canvas
 *   [1, x, y, width, height, RGBA bytes...] new pixels of one rectangle, row by row
 *
 * A text message {"t":"none"} says there is no display device. One batch of rectangles is in
 * flight at a time: what changes meanwhile is merged into the next batch, so a slow page gets
 * fewer, larger updates instead of a growing queue, and never loses a change.
 */
import type { WebSocket } from 'ws';
import type { DashboardDevice } from './controls.ts';

export interface Rect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** What the stream needs of a framebuffer: RGBA pixels row by row, and word of changes. */
export interface FramebufferView {
  readonly width: number;
  readonly height: number;
  readonly pixels: Uint8Array;
  onDirty(listener: (rect: Rect) => void): () => void;
}

/** A device with a display: its current framebuffer, replaced (with an event) when the guest changes its size. */
export interface DisplaySource {
  framebuffer(index?: number): FramebufferView;
  on(event: 'framebuffer', listener: (scanout: number, framebuffer: FramebufferView) => void): unknown;
  off(event: 'framebuffer', listener: (scanout: number, framebuffer: FramebufferView) => void): unknown;
}

function isDisplaySource(device: object): device is DisplaySource {
  const d = device as Partial<Record<keyof DisplaySource, unknown>>;
  return typeof d.framebuffer === 'function' && typeof d.on === 'function' && typeof d.off === 'function';
}

/** The first hosted device with a display, or undefined. */
export function findDisplay(devices: readonly DashboardDevice[]): DisplaySource | undefined {
  for (const d of devices) for (const device of d.instance.devices) if (isDisplaySource(device)) return device;
  return undefined;
}

/** More rectangles than this in one batch are sent as the one rectangle holding them all. */
const MAX_RECTS = 16;

const Message = { MODE: 0, RECT: 1 } as const;

function header(words: readonly number[], extra = 0): Buffer {
  const b = Buffer.alloc(words.length * 4 + extra);
  words.forEach((w, i) => b.writeUInt32LE(w, i * 4));
  return b;
}

function rectMessage(fb: FramebufferView, r: Rect): Buffer {
  const row = r.width * 4;
  const msg = header([Message.RECT, r.x, r.y, r.width, r.height], row * r.height);
  for (let y = 0; y < r.height; y++) {
    const from = ((r.y + y) * fb.width + r.x) * 4;
    msg.set(fb.pixels.subarray(from, from + row), 20 + y * row);
  }
  return msg;
}

function bounds(rects: readonly Rect[]): Rect {
  const x0 = Math.min(...rects.map((r) => r.x));
  const y0 = Math.min(...rects.map((r) => r.y));
  const x1 = Math.max(...rects.map((r) => r.x + r.width));
  const y1 = Math.max(...rects.map((r) => r.y + r.height));
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

export function serveDisplay(ws: WebSocket, find: () => DisplaySource | undefined): void {
  const source = find();
  if (source === undefined) {
    ws.send(JSON.stringify({ t: 'none' }));
    return;
  }
  let fb = source.framebuffer(0);
  let pending: Rect[] = [];
  /** A new framebuffer whose size the page has not been told yet. */
  let newMode = true;
  let sending = false;
  let stopDirty: () => void = () => {};

  const flush = (): void => {
    if (sending || ws.readyState !== ws.OPEN || (pending.length === 0 && !newMode)) return;
    const messages: Buffer[] = [];
    if (newMode) {
      messages.push(header([Message.MODE, fb.width, fb.height]));
      pending = [{ x: 0, y: 0, width: fb.width, height: fb.height }];
      newMode = false;
    }
    const rects = pending.length > MAX_RECTS ? [bounds(pending)] : pending;
    pending = [];
    for (const r of rects) messages.push(rectMessage(fb, r));
    sending = true;
    let left = messages.length;
    for (const m of messages) {
      ws.send(m, { binary: true }, () => {
        if (--left > 0) return;
        sending = false;
        flush();
      });
    }
  };
  const watch = (framebuffer: FramebufferView): void => {
    stopDirty();
    fb = framebuffer;
    newMode = true;
    pending = [];
    stopDirty = fb.onDirty((rect) => {
      pending.push(rect);
      // After the device's current work: rectangles marked together go in one batch.
      if (pending.length === 1) setImmediate(flush);
    });
    setImmediate(flush);
  };
  const onFramebuffer = (scanout: number, framebuffer: FramebufferView): void => {
    if (scanout === 0) watch(framebuffer);
  };
  source.on('framebuffer', onFramebuffer);
  watch(fb);
  ws.on('close', () => {
    stopDirty();
    source.off('framebuffer', onFramebuffer);
  });
}
