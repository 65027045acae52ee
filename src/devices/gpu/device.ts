/**
 * The GPU device (§5.7), host half, in 2D mode: the driver creates resources, backs them with
 * guest pages, transfers pixels into the host's copy, points scanouts at them and flushes
 * rectangles; each scanout renders into an RGBA Framebuffer that paravirt shows as PNG. The cursor
 * queue carries the pointer image and position.
 *
 * Every request is answered with a ctrl_hdr response (§5.7.6.7); a bad request gets the error
 * the spec names for it (a missing resource: ERR_INVALID_RESOURCE_ID, a bad scanout:
 * ERR_INVALID_SCANOUT_ID, a rectangle or offset out of bounds: ERR_INVALID_PARAMETER, host memory
 * past the bound: ERR_OUT_OF_MEMORY, an unknown or short command: ERR_UNSPEC) and the device goes
 * on. Only a broken ring (QueueServer) sets DEVICE_NEEDS_RESET. Requests are served at once, so
 * a fenced request's response (§5.7.6.7: FLAG_FENCE, the same fence_id) means it is done.
 */
import { EventEmitter } from 'node:events';
import { type Logger, pino } from 'pino';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE, featureBit, hasFeature } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { addr64 } from '../../virtio/memory.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import { Framebuffer } from '../display/framebuffer.ts';
import { EDID_MAX_SIDE, buildEdid } from './edid.ts';
import { Backing, type MemEntry, Resource } from './resources.ts';
import { VhostUserGpuDisplay } from './vhost-user-display.ts';
import {
  BYTES_PER_PIXEL,
  CTRL_HDR_SIZE,
  type CtrlHdr,
  DISPLAY_INFO_SIZE,
  DISPLAY_ONE_SIZE,
  EDID_RESPONSE_SIZE,
  EVENT_DISPLAY,
  GPU_CONFIG,
  GPU_FEATURE_NAMES,
  GpuCmd,
  GpuFeature,
  GpuFlag,
  type GpuRect,
  GpuResp,
  MAX_SCANOUTS,
  MEM_ENTRY_SIZE,
  PIXEL_LAYOUTS,
  RECT_SIZE,
  REQUEST_SIZE,
  decodeHdr,
  decodeRect,
  encodeHdr,
  encodeRect,
} from './wire.ts';

export const CONTROLQ = 0;
export const CURSORQ = 1;

/** Smallest side of a display mode (below it no driver draws a usable console). */
export const MIN_MODE_SIDE = 16;
/** Largest side of a display mode: what an EDID detailed timing can describe. */
export const MAX_MODE_SIDE = EDID_MAX_SIDE;

/**
 * Scatter list entries accepted in one RESOURCE_ATTACH_BACKING: QEMU's bound too, so a stock
 * driver never meets it (Linux merges contiguous pages; a 4095x4095 image needs 16380 pages).
 */
export const MAX_BACKING_ENTRIES = 16384;

/**
 * What a resource and a scatter list entry cost the host beside their pixels: the objects and
 * map entry holding them. Charged against the bound so that many tiny resources (1x1, four bytes
 * of pixels each) run into it as surely as a few large ones, instead of into the process's heap.
 */
const RESOURCE_OVERHEAD = 512;
/**
 * Largest side of a resource. Linux's virtio_gpu makes none above 8192 (its mode_config
 * limits); without a bound a 1x67M resource inside the memory bound would make each transfer
 * 67 million row copies, stalling every device the process serves.
 */
export const MAX_RESOURCE_SIDE = 16384;
const ENTRY_OVERHEAD = 128;

/** Default bound of host memory held for resources: QEMU's virtio-gpu default (max_hostmem). */
export const DEFAULT_MAX_RESOURCE_MEMORY = 256 * 1024 * 1024;

/** A display mode: what GET_DISPLAY_INFO reports for a scanout and the EDID describes. */
export interface DisplayMode {
  readonly width: number;
  readonly height: number;
  /** Whether a display is connected at this scanout (default true). */
  readonly enabled?: boolean;
}

export interface GpuDeviceOptions {
  readonly maxQueueSize?: number;
  /** One mode per scanout (1..16 of them); default one 1024x768 scanout. */
  readonly scanouts?: readonly DisplayMode[];
  /** Bytes of host memory resources may hold together (pixels and scatter lists). */
  readonly maxResourceMemory?: number;
  /** Offer F_EDID (default true). */
  readonly edid?: boolean;
  /** Where the display stream (vhost-user-gpu) logs; queues log through their DeviceContext. */
  readonly log?: Logger;
}

/** The pointer as the driver last set it (§5.7.6.10). */
export interface CursorState {
  readonly scanout: number;
  readonly x: number;
  readonly y: number;
  readonly hotX: number;
  readonly hotY: number;
  /** The image as RGBA, or undefined when the cursor is hidden. */
  readonly image: Framebuffer | undefined;
}

interface Scanout {
  mode: Required<DisplayMode>;
  /** The resource shown (0: none) and the part of it shown. */
  resourceId: number;
  rect: GpuRect;
  framebuffer: Framebuffer;
}

interface Counts {
  resourcesCreated: number;
  transfers: number;
  flushes: number;
  outOfMemory: number;
  badRequests: number;
  unknownCommands: number;
  fences: number;
  displayEvents: number;
}

/** A handler's answer: a response type and, for the OK_* that carry data, the bytes after the header. */
interface Answer {
  readonly type: number;
  readonly body?: Uint8Array;
}

const ok: Answer = { type: GpuResp.OK_NODATA };
const err = (type: number): Answer => ({ type });

export class GpuDevice extends EventEmitter<{ framebuffer: [scanout: number, framebuffer: Framebuffer]; cursor: [cursor: CursorState] }> implements VirtioDevice {
  readonly deviceId = DeviceId.GPU;
  readonly name = 'gpu';
  /** §5.7.2: controlq and cursorq. */
  readonly numQueues = 2;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly featureNames = GPU_FEATURE_NAMES;
  readonly config: Uint8Array;
  private readonly counts: Counts = {
    resourcesCreated: 0,
    transfers: 0,
    flushes: 0,
    outOfMemory: 0,
    badRequests: 0,
    unknownCommands: 0,
    fences: 0,
    displayEvents: 0,
  };
  readonly counters = new DeviceCounters(2, () => ({
    ...this.counts,
    resources: this.resources.size,
    resourceBytes: this.usedBytes,
    displayUpdatesSkipped: this.skippedBefore + (this.display?.skippedUpdates ?? 0),
  }));
  readonly maxResourceMemory: number;
  private readonly scanouts: Scanout[];
  private readonly resources = new Map<number, Resource>();
  private usedBytes = 0;
  private eventsRead = 0;
  private cursorState: CursorState = { scanout: 0, x: 0, y: 0, hotX: 0, hotY: 0, image: undefined };
  private ctx: DeviceContext | undefined;
  private control: QueueServer | undefined;
  private cursorq: QueueServer | undefined;
  private display: VhostUserGpuDisplay | undefined;
  /** Display updates skipped by streams that ended, for the counters. */
  private skippedBefore = 0;
  private readonly log: Logger | undefined;

  constructor(options: GpuDeviceOptions = {}) {
    super();
    this.log = options.log;
    this.maxQueueSize = options.maxQueueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    this.features = FRAMEWORK_FEATURES | (options.edid === false ? 0n : featureBit(GpuFeature.EDID));
    this.maxResourceMemory = options.maxResourceMemory ?? DEFAULT_MAX_RESOURCE_MEMORY;
    if (!Number.isSafeInteger(this.maxResourceMemory) || this.maxResourceMemory < 0) {
      throw new RangeError(`maxResourceMemory ${this.maxResourceMemory} is not a non-negative number of bytes`);
    }
    const modes = options.scanouts ?? [{ width: 1024, height: 768 }];
    if (modes.length < 1 || modes.length > MAX_SCANOUTS) throw new RangeError(`${modes.length} scanouts is not between 1 and ${MAX_SCANOUTS}`);
    this.scanouts = modes.map((m) => {
      const mode = checkedMode(m);
      return { mode, resourceId: 0, rect: { x: 0, y: 0, width: 0, height: 0 }, framebuffer: new Framebuffer(mode.width, mode.height) };
    });
    this.config = GPU_CONFIG.encode({ eventsRead: 0, eventsClear: 0, numScanouts: modes.length, numCapsets: 0 });
  }

  // --- what the host sees and controls ---

  get numScanouts(): number {
    return this.scanouts.length;
  }

  /** What scanout `index` shows now (a new object after the driver changes its size). */
  framebuffer(index = 0): Framebuffer {
    return this.scanout(index).framebuffer;
  }

  /** Scanout `index` as a PNG file. */
  screenshot(index = 0): Buffer {
    return this.framebuffer(index).toPng();
  }

  /** The display mode reported for scanout `index`. */
  mode(index = 0): Required<DisplayMode> {
    return { ...this.scanout(index).mode };
  }

  get cursor(): CursorState {
    return this.cursorState;
  }

  /**
   * A display change (a monitor resized, plugged or unplugged): GET_DISPLAY_INFO reports the new
   * mode, and the driver learns of it through events_read and a configuration change
   * notification (§5.7.4.1).
   */
  setMode(index: number, mode: DisplayMode): void {
    const s = this.scanout(index);
    s.mode = checkedMode(mode);
    this.eventsRead |= EVENT_DISPLAY;
    GPU_CONFIG.set(this.config, 'eventsRead', this.eventsRead);
    this.counts.displayEvents++;
    this.ctx?.configChanged();
  }

  /** Stops a vhost-user-gpu display stream, if one runs. */
  close(): void {
    this.skippedBefore += this.display?.skippedUpdates ?? 0;
    this.display?.close();
    this.display = undefined;
  }

  // --- VirtioDevice ---

  /** vhost-user GPU_SET_SOCKET: the front-end shows the scanouts from now on (a new socket replaces the old). */
  displaySocket(fd: number): void {
    this.close();
    this.display = new VhostUserGpuDisplay(this, fd, this.log ?? pino({ name: 'paravirt' }));
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.control = new QueueServer(ctx, CONTROLQ, (req) => this.serve(req, CONTROLQ));
    this.cursorq = new QueueServer(ctx, CURSORQ, (req) => this.serve(req, CURSORQ));
  }

  queueNotify(index: number): void {
    if (index === CONTROLQ) this.control?.kick();
    else if (index === CURSORQ) this.cursorq?.kick();
  }

  configWritten(offset: number, length: number): void {
    // §5.7.4: the driver clears the events it handled by writing events_clear; events_read is
    // the device's and a write to it does not stick.
    if (GPU_CONFIG.touches('eventsClear', offset, length)) {
      this.eventsRead &= ~GPU_CONFIG.get(this.config, 'eventsClear');
      GPU_CONFIG.set(this.config, 'eventsClear', 0);
    }
    GPU_CONFIG.set(this.config, 'eventsRead', this.eventsRead);
    GPU_CONFIG.set(this.config, 'numScanouts', this.scanouts.length);
    GPU_CONFIG.set(this.config, 'numCapsets', 0);
  }

  reset(): void {
    this.ctx = undefined;
    this.control = undefined;
    this.cursorq = undefined;
    this.resources.clear();
    this.usedBytes = 0;
    for (let i = 0; i < this.scanouts.length; i++) this.showNothing(i);
    this.setCursor({ scanout: 0, x: 0, y: 0, hotX: 0, hotY: 0, image: undefined });
  }

  // --- requests ---

  private serve(req: Request, queue: number): void {
    const head = req.reader.readExact(CTRL_HDR_SIZE);
    const hdr: CtrlHdr = head ? decodeHdr(new DataView(head.buffer)) : { type: 0, flags: 0, fenceId: 0n, ctxId: 0, ringIdx: 0 };
    const answer = head ? this.dispatch(req, hdr, queue) : err(GpuResp.ERR_UNSPEC);
    if (answer.type >= GpuResp.ERR_UNSPEC) {
      const ctx = this.ctx;
      if (ctx) ctx.counters.queue(queue).errors++;
      ctx?.log.debug(`gpu: command 0x${hdr.type.toString(16)} answered 0x${answer.type.toString(16)}`);
    }
    // The cursor queue's commands need no answer (Linux posts none); one is written when room is given.
    if (queue === CURSORQ && req.writer.remaining < CTRL_HDR_SIZE) return;
    const out = new Uint8Array(CTRL_HDR_SIZE + (answer.body?.length ?? 0));
    // §5.7.6.7: a fenced request's response carries FLAG_FENCE and the same fence_id (and ring_idx).
    const fenced = (hdr.flags & GpuFlag.FENCE) !== 0;
    if (fenced) this.counts.fences++;
    encodeHdr(new DataView(out.buffer), 0, {
      type: answer.type,
      flags: hdr.flags & (GpuFlag.FENCE | GpuFlag.INFO_RING_IDX),
      fenceId: fenced ? hdr.fenceId : 0n,
      ctxId: hdr.ctxId,
      ringIdx: (hdr.flags & GpuFlag.INFO_RING_IDX) !== 0 ? hdr.ringIdx : 0,
    });
    if (answer.body) out.set(answer.body, CTRL_HDR_SIZE);
    req.writer.write(out);
  }

  private dispatch(req: Request, hdr: CtrlHdr, queue: number): Answer {
    const size = REQUEST_SIZE[hdr.type];
    const cursorCmd = hdr.type === GpuCmd.UPDATE_CURSOR || hdr.type === GpuCmd.MOVE_CURSOR;
    if (size === undefined || cursorCmd !== (queue === CURSORQ) || (hdr.type === GpuCmd.GET_EDID && !this.negotiated(GpuFeature.EDID))) {
      this.counts.unknownCommands++;
      return err(GpuResp.ERR_UNSPEC);
    }
    const rest = req.reader.readExact(size - CTRL_HDR_SIZE);
    if (rest === undefined) {
      this.counts.badRequests++;
      return err(GpuResp.ERR_UNSPEC);
    }
    const v = new DataView(rest.buffer);
    switch (hdr.type) {
      case GpuCmd.GET_DISPLAY_INFO:
        return this.displayInfo();
      case GpuCmd.GET_EDID:
        return this.edid(v.getUint32(0, true));
      case GpuCmd.RESOURCE_CREATE_2D:
        return this.create2d(v.getUint32(0, true), v.getUint32(4, true), v.getUint32(8, true), v.getUint32(12, true));
      case GpuCmd.RESOURCE_UNREF:
        return this.unref(v.getUint32(0, true));
      case GpuCmd.SET_SCANOUT:
        return this.setScanout(v.getUint32(RECT_SIZE, true), v.getUint32(RECT_SIZE + 4, true), decodeRect(v, 0));
      case GpuCmd.RESOURCE_FLUSH:
        return this.flush(v.getUint32(RECT_SIZE, true), decodeRect(v, 0));
      case GpuCmd.TRANSFER_TO_HOST_2D:
        return this.transfer(v.getUint32(RECT_SIZE + 8, true), decodeRect(v, 0), addr64(v.getUint32(RECT_SIZE, true), v.getUint32(RECT_SIZE + 4, true)));
      case GpuCmd.RESOURCE_ATTACH_BACKING:
        return this.attach(req, v.getUint32(0, true), v.getUint32(4, true));
      case GpuCmd.RESOURCE_DETACH_BACKING:
        return this.detach(v.getUint32(0, true));
      default:
        return this.updateCursor(hdr.type === GpuCmd.MOVE_CURSOR, v);
    }
  }

  private negotiated(bit: number): boolean {
    return this.ctx !== undefined && hasFeature(this.ctx.features, bit);
  }

  /** §5.7.6.8 GET_DISPLAY_INFO: every scanout's mode and whether a display is connected. */
  private displayInfo(): Answer {
    const body = new Uint8Array(DISPLAY_INFO_SIZE - CTRL_HDR_SIZE);
    const v = new DataView(body.buffer);
    this.scanouts.forEach((s, i) => {
      const at = i * DISPLAY_ONE_SIZE;
      encodeRect(v, at, { x: 0, y: 0, width: s.mode.width, height: s.mode.height });
      v.setUint32(at + RECT_SIZE, s.mode.enabled ? 1 : 0, true);
    });
    return { type: GpuResp.OK_DISPLAY_INFO, body };
  }

  /** §5.7.6.8 GET_EDID: an EDID block describing the scanout's mode. */
  private edid(scanout: number): Answer {
    if (scanout >= this.scanouts.length) return this.bad(GpuResp.ERR_INVALID_SCANOUT_ID);
    const mode = this.scanouts[scanout]!.mode;
    const block = buildEdid(mode.width, mode.height);
    const body = new Uint8Array(EDID_RESPONSE_SIZE - CTRL_HDR_SIZE);
    new DataView(body.buffer).setUint32(0, block.length, true);
    body.set(block, 8);
    return { type: GpuResp.OK_EDID, body };
  }

  private create2d(id: number, format: number, width: number, height: number): Answer {
    const layout = PIXEL_LAYOUTS[format];
    if (id === 0 || this.resources.has(id)) return this.bad(GpuResp.ERR_INVALID_RESOURCE_ID);
    if (layout === undefined || width === 0 || height === 0) return this.bad(GpuResp.ERR_INVALID_PARAMETER);
    // The product of two 32-bit sides may pass 2^53 and lose precision, but never below the bound.
    const bytes = width * height * BYTES_PER_PIXEL + RESOURCE_OVERHEAD;
    if (!this.reserve(bytes)) return err(GpuResp.ERR_OUT_OF_MEMORY);
    if (width > MAX_RESOURCE_SIDE || height > MAX_RESOURCE_SIDE) {
      this.usedBytes -= bytes;
      return this.bad(GpuResp.ERR_INVALID_PARAMETER);
    }
    let res: Resource;
    try {
      res = new Resource(id, format, layout, width, height);
    } catch {
      // The host could not allocate what the bound allowed (a bound set above the host's memory).
      this.usedBytes -= bytes;
      this.counts.outOfMemory++;
      return err(GpuResp.ERR_OUT_OF_MEMORY);
    }
    this.resources.set(id, res);
    this.counts.resourcesCreated++;
    return ok;
  }

  /** Takes `bytes` from the resource memory bound; false (counted) when they do not fit. */
  private reserve(bytes: number): boolean {
    if (bytes > this.maxResourceMemory - this.usedBytes) {
      this.counts.outOfMemory++;
      return false;
    }
    this.usedBytes += bytes;
    return true;
  }

  private unref(id: number): Answer {
    const res = this.resources.get(id);
    if (res === undefined) return this.bad(GpuResp.ERR_INVALID_RESOURCE_ID);
    // A scanout still showing it stops (QEMU does the same); the image it showed stays black.
    this.scanouts.forEach((s, i) => {
      if (s.resourceId === id) this.showNothing(i);
    });
    this.dropBacking(res);
    this.usedBytes -= res.pixels.length + RESOURCE_OVERHEAD;
    this.resources.delete(id);
    return ok;
  }

  private attach(req: Request, id: number, count: number): Answer {
    const res = this.resources.get(id);
    if (res === undefined) return this.bad(GpuResp.ERR_INVALID_RESOURCE_ID);
    if (res.backing !== undefined) return this.bad(GpuResp.ERR_UNSPEC);
    if (count === 0 || count > MAX_BACKING_ENTRIES) return this.bad(GpuResp.ERR_INVALID_PARAMETER);
    const table = req.reader.readExact(count * MEM_ENTRY_SIZE);
    if (table === undefined) return this.bad(GpuResp.ERR_UNSPEC);
    const memory = this.ctx!.memory;
    const v = new DataView(table.buffer);
    const entries: MemEntry[] = [];
    for (let i = 0; i < count; i++) {
      const at = i * MEM_ENTRY_SIZE;
      const entry = { addr: addr64(v.getUint32(at, true), v.getUint32(at + 4, true)), length: v.getUint32(at + 8, true) };
      if (!memory.contains(entry.addr, entry.length)) return this.bad(GpuResp.ERR_INVALID_PARAMETER);
      entries.push(entry);
    }
    if (!this.reserve(count * ENTRY_OVERHEAD)) return err(GpuResp.ERR_OUT_OF_MEMORY);
    res.backing = new Backing(entries);
    return ok;
  }

  private detach(id: number): Answer {
    const res = this.resources.get(id);
    if (res === undefined) return this.bad(GpuResp.ERR_INVALID_RESOURCE_ID);
    if (res.backing === undefined) return this.bad(GpuResp.ERR_UNSPEC);
    this.dropBacking(res);
    return ok;
  }

  private dropBacking(res: Resource): void {
    if (res.backing === undefined) return;
    this.usedBytes -= res.backing.entries.length * ENTRY_OVERHEAD;
    res.backing = undefined;
  }

  /** §5.7.6.8 SET_SCANOUT: show `rect` of resource `id` on the scanout; resource 0 disables it. */
  private setScanout(index: number, id: number, rect: GpuRect): Answer {
    if (index >= this.scanouts.length) return this.bad(GpuResp.ERR_INVALID_SCANOUT_ID);
    if (id === 0) {
      this.showNothing(index);
      return ok;
    }
    const res = this.resources.get(id);
    if (res === undefined) return this.bad(GpuResp.ERR_INVALID_RESOURCE_ID);
    // A scanout's picture is host memory outside the resource bound: no side past the largest mode.
    const side = (n: number): boolean => n >= 1 && n <= MAX_MODE_SIDE;
    if (!side(rect.width) || !side(rect.height) || !res.contains(rect)) return this.bad(GpuResp.ERR_INVALID_PARAMETER);
    const s = this.scanouts[index]!;
    s.resourceId = id;
    s.rect = rect;
    if (s.framebuffer.width !== rect.width || s.framebuffer.height !== rect.height) {
      s.framebuffer = new Framebuffer(rect.width, rect.height);
      this.emit('framebuffer', index, s.framebuffer);
    }
    this.render(s, res, rect);
    return ok;
  }

  private transfer(id: number, rect: GpuRect, offset: number): Answer {
    const res = this.resources.get(id);
    if (res === undefined) return this.bad(GpuResp.ERR_INVALID_RESOURCE_ID);
    if (!res.contains(rect) || res.backing === undefined) return this.bad(GpuResp.ERR_INVALID_PARAMETER);
    if (!res.transferFromBacking(this.ctx!.memory, rect, offset)) return this.bad(GpuResp.ERR_INVALID_PARAMETER);
    this.counts.transfers++;
    return ok;
  }

  /** §5.7.6.8 RESOURCE_FLUSH: the part of `rect` each scanout shows goes to its framebuffer. */
  private flush(id: number, rect: GpuRect): Answer {
    const res = this.resources.get(id);
    if (res === undefined) return this.bad(GpuResp.ERR_INVALID_RESOURCE_ID);
    if (!res.contains(rect)) return this.bad(GpuResp.ERR_INVALID_PARAMETER);
    for (const s of this.scanouts) if (s.resourceId === id) this.render(s, res, rect);
    this.counts.flushes++;
    return ok;
  }

  /** Draws the part of resource rectangle `r` that scanout `s` shows, and marks it dirty. */
  private render(s: Scanout, res: Resource, r: GpuRect): void {
    const x0 = Math.max(r.x, s.rect.x);
    const y0 = Math.max(r.y, s.rect.y);
    const x1 = Math.min(r.x + r.width, s.rect.x + s.rect.width);
    const y1 = Math.min(r.y + r.height, s.rect.y + s.rect.height);
    if (x1 <= x0 || y1 <= y0) return;
    const fb = s.framebuffer;
    const dirty = { x: x0 - s.rect.x, y: y0 - s.rect.y, width: x1 - x0, height: y1 - y0 };
    res.toRgba({ x: x0, y: y0, width: dirty.width, height: dirty.height }, fb.pixels, fb.width, dirty.x, dirty.y, true);
    fb.markDirty(dirty);
  }

  /** The scanout shows no resource: black, at the size it had. */
  private showNothing(index: number): void {
    const s = this.scanouts[index]!;
    s.resourceId = 0;
    s.rect = { x: 0, y: 0, width: 0, height: 0 };
    const fb = s.framebuffer;
    fb.fill({ x: 0, y: 0, width: fb.width, height: fb.height }, 0, 0, 0);
    fb.markDirty({ x: 0, y: 0, width: fb.width, height: fb.height });
  }

  /**
   * §5.7.6.10: UPDATE_CURSOR sets the image (from a resource's host copy, already transferred)
   * and position, resource 0 hides the cursor; MOVE_CURSOR only moves it.
   */
  private updateCursor(move: boolean, v: DataView): Answer {
    const scanout = v.getUint32(0, true);
    const x = v.getUint32(4, true);
    const y = v.getUint32(8, true);
    if (scanout >= this.scanouts.length) return this.bad(GpuResp.ERR_INVALID_SCANOUT_ID);
    if (move) {
      this.setCursor({ ...this.cursorState, scanout, x, y });
      return ok;
    }
    const id = v.getUint32(16, true);
    const hot = { hotX: v.getUint32(20, true), hotY: v.getUint32(24, true) };
    if (id === 0) {
      this.setCursor({ scanout, x, y, ...hot, image: undefined });
      return ok;
    }
    const res = this.resources.get(id);
    if (res === undefined) return this.bad(GpuResp.ERR_INVALID_RESOURCE_ID);
    // A cursor is small (64x64 in every driver); a larger resource shows its top-left corner.
    const image = new Framebuffer(Math.min(res.width, 256), Math.min(res.height, 256));
    res.toRgba({ x: 0, y: 0, width: image.width, height: image.height }, image.pixels, image.width, 0, 0, false);
    this.setCursor({ scanout, x, y, ...hot, image });
    return ok;
  }

  private setCursor(cursor: CursorState): void {
    this.cursorState = cursor;
    this.emit('cursor', cursor);
  }

  private bad(type: number): Answer {
    this.counts.badRequests++;
    return err(type);
  }

  private scanout(index: number): Scanout {
    const s = this.scanouts[index];
    if (s === undefined) throw new RangeError(`scanout ${index} does not exist (the device has ${this.scanouts.length})`);
    return s;
  }
}

function checkedMode(m: DisplayMode): Required<DisplayMode> {
  const side = (n: number): boolean => Number.isInteger(n) && n >= MIN_MODE_SIDE && n <= MAX_MODE_SIDE;
  if (!side(m.width) || !side(m.height)) {
    throw new RangeError(`display mode ${m.width}x${m.height} is not between ${MIN_MODE_SIDE}x${MIN_MODE_SIDE} and ${MAX_MODE_SIDE}x${MAX_MODE_SIDE}`);
  }
  return { width: m.width, height: m.height, enabled: m.enabled ?? true };
}
