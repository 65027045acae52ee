/**
 * The display half of QEMU's vhost-user-gpu protocol (docs/interop/vhost-user-gpu.rst): behind
 * `vhost-user-gpu-pci` the front-end owns the screen, and the back-end sends it what each scanout
 * shows over the socket it got with GPU_SET_SOCKET — SCANOUT when a scanout's size changes,
 * UPDATE with the pixels (PIXMAN_x8r8g8b8: bytes B, G, R, X on little-endian) of each changed
 * rectangle, CURSOR_UPDATE / CURSOR_POS / CURSOR_POS_HIDE for the pointer. None of these has a
 * reply; the front-end's bytes (it sends none unprompted) are read and dropped.
 *
 * Nothing here trusts the front-end: it only ever receives. A socket that fails or is closed
 * ends the stream with one log line and the device keeps serving the guest.
 */
import { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Framebuffer, Rect } from '../display/framebuffer.ts';
import type { CursorState, GpuDevice } from './device.ts';
import { CURSOR_SIZE } from './wire.ts';

/** VhostUserGpuRequest values (vhost-user-gpu.rst "Message types"). */
export const GpuDisplayRequest = {
  CURSOR_POS: 4,
  CURSOR_POS_HIDE: 5,
  CURSOR_UPDATE: 6,
  SCANOUT: 7,
  UPDATE: 8,
} as const;

/** request, flags, size. */
const HEADER_SIZE = 12;

/**
 * Bytes waiting in the socket past which updates are not queued: a front-end that does not read
 * must not grow the back-end's memory. What it missed is sent whole once the socket drains (a
 * display only needs the latest picture); each such skip is counted.
 */
const MAX_BACKLOG = 64 << 20;

/** One message: header and payload of u32 fields, then `data`. */
export function displayMessage(request: number, fields: readonly number[], data?: Uint8Array): Buffer {
  const size = fields.length * 4 + (data?.length ?? 0);
  const out = Buffer.alloc(HEADER_SIZE + size);
  out.writeUInt32LE(request, 0);
  out.writeUInt32LE(size, 8);
  fields.forEach((f, i) => out.writeUInt32LE(f >>> 0, HEADER_SIZE + i * 4));
  if (data) out.set(data, HEADER_SIZE + fields.length * 4);
  return out;
}

/** `rect` of an RGBA framebuffer as x8r8g8b8 (or a8r8g8b8) rows: bytes B, G, R, A. */
function toBgra(fb: Framebuffer, r: Rect): Uint8Array {
  const out = new Uint8Array(r.width * r.height * 4);
  const px = fb.pixels;
  for (let y = 0; y < r.height; y++) {
    let s = ((r.y + y) * fb.width + r.x) * 4;
    let d = y * r.width * 4;
    for (let x = 0; x < r.width; x++, s += 4, d += 4) {
      out[d] = px[s + 2]!;
      out[d + 1] = px[s + 1]!;
      out[d + 2] = px[s]!;
      out[d + 3] = px[s + 3]!;
    }
  }
  return out;
}

export class VhostUserGpuDisplay {
  private readonly socket: Socket;
  /** The size last announced with SCANOUT, per scanout. */
  private readonly announced = new Map<number, string>();
  private readonly stops: (() => void)[] = [];
  /** Per scanout, how to stop watching the framebuffer it shows (a replaced one is let go). */
  private readonly watching = new Map<number, () => void>();
  private lastCursorImage: Framebuffer | undefined;
  /** The cursor changed while the front-end was not reading: sent as it is then, once it reads. */
  private cursorStale = false;
  /** Scanouts whose updates were skipped while the socket was full. */
  private readonly stale = new Set<number>();
  private closed = false;
  /** Updates skipped because the front-end was not reading. */
  skippedUpdates = 0;

  constructor(
    private readonly device: GpuDevice,
    fd: number,
    private readonly log: Logger,
  ) {
    this.socket = new Socket({ fd, readable: true, writable: true });
    this.socket.on('data', () => {});
    this.socket.on('error', (err) => {
      this.log.warn({ err }, 'gpu: the vhost-user-gpu display socket failed; the display stream stops');
      this.close();
    });
    this.socket.on('close', () => this.close());
    this.socket.on('drain', () => this.refreshStale());
    // A new socket (QEMU makes one at each DRIVER_OK) starts with what each scanout shows now.
    for (let i = 0; i < device.numScanouts; i++) {
      const fb = device.framebuffer(i);
      this.watch(i, fb);
      this.update(i, fb, { x: 0, y: 0, width: fb.width, height: fb.height });
    }
    const onFramebuffer = (i: number, fb: Framebuffer): void => this.watch(i, fb);
    const onCursor = (c: CursorState): void => this.cursor(c);
    device.on('framebuffer', onFramebuffer);
    device.on('cursor', onCursor);
    this.stops.push(() => device.off('framebuffer', onFramebuffer), () => device.off('cursor', onCursor));
  }

  /** Stops the stream and closes the socket. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const stop of this.stops) stop();
    for (const stop of this.watching.values()) stop();
    this.watching.clear();
    this.socket.destroy();
  }

  private watch(index: number, fb: Framebuffer): void {
    if (this.closed) return;
    // A replaced framebuffer (the scanout changed size) no longer speaks for the scanout, and
    // holding on to it would keep every picture a guest ever made the scanout show.
    this.watching.get(index)?.();
    this.watching.set(index, fb.onDirty((rect) => this.update(index, fb, rect)));
  }

  private update(index: number, fb: Framebuffer, rect: Rect): void {
    if (this.socket.writableLength > MAX_BACKLOG) {
      this.skippedUpdates++;
      this.stale.add(index);
      return;
    }
    // SCANOUT before the first UPDATE of each size: the front-end draws into the surface it makes then.
    const size = `${fb.width}x${fb.height}`;
    if (this.announced.get(index) !== size) {
      this.announced.set(index, size);
      this.send(displayMessage(GpuDisplayRequest.SCANOUT, [index, fb.width, fb.height]));
    }
    this.send(displayMessage(GpuDisplayRequest.UPDATE, [index, rect.x, rect.y, rect.width, rect.height], toBgra(fb, rect)));
  }

  private refreshStale(): void {
    if (this.cursorStale) {
      this.cursorStale = false;
      this.cursor(this.device.cursor);
    }
    for (const index of this.stale) {
      this.stale.delete(index);
      const fb = this.device.framebuffer(index);
      this.update(index, fb, { x: 0, y: 0, width: fb.width, height: fb.height });
    }
  }

  private cursor(c: CursorState): void {
    // The cursor's messages are bounded like the pictures': a guest moving it faster than the
    // front-end reads must not grow the socket's queue without end.
    if (this.socket.writableLength > MAX_BACKLOG) {
      this.skippedUpdates++;
      this.cursorStale = true;
      this.lastCursorImage = undefined;
      return;
    }
    const pos = [c.scanout, c.x, c.y];
    if (c.image === undefined) {
      this.lastCursorImage = undefined;
      this.send(displayMessage(GpuDisplayRequest.CURSOR_POS_HIDE, pos));
    } else if (c.image !== this.lastCursorImage) {
      this.lastCursorImage = c.image;
      // The protocol's cursor is 64x64 a8r8g8b8; a smaller image sits in its top-left corner.
      const data = new Uint8Array(CURSOR_SIZE * CURSOR_SIZE * 4);
      const w = Math.min(c.image.width, CURSOR_SIZE);
      const h = Math.min(c.image.height, CURSOR_SIZE);
      const rows = toBgra(c.image, { x: 0, y: 0, width: w, height: h });
      for (let y = 0; y < h; y++) data.set(rows.subarray(y * w * 4, (y + 1) * w * 4), y * CURSOR_SIZE * 4);
      this.send(displayMessage(GpuDisplayRequest.CURSOR_UPDATE, [...pos, c.hotX, c.hotY], data));
    } else {
      this.send(displayMessage(GpuDisplayRequest.CURSOR_POS, pos));
    }
  }

  private send(message: Buffer): void {
    if (!this.closed) this.socket.write(message);
  }
}
