/**
 * The guest driver of the GPU device (§5.7), 2D mode: it reads the displays, creates resources
 * backed by guest memory from the DMA pool, points a scanout at one, and draws by writing pixels
 * into the backing, transferring and flushing — the sequence of §5.7.6.1 "Device Operation:
 * Create a framebuffer and configure scanout" and "Update a framebuffer and scanout". It follows
 * display changes (§5.7.4.1: events_read, GET_DISPLAY_INFO, events_clear).
 */
import type { Logger } from 'pino';
import { DeviceId, featureBit, hasFeature } from '../../virtio/constants.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import type { Segment } from '../../virtio/queue.ts';
import {
  BYTES_PER_PIXEL,
  CTRL_HDR_SIZE,
  DISPLAY_INFO_SIZE,
  type DisplayOne,
  EDID_RESPONSE_SIZE,
  EVENT_DISPLAY,
  GPU_CONFIG,
  GPU_TYPE_NAMES,
  GpuCmd,
  GpuFeature,
  GpuFlag,
  GpuFormat,
  type GpuRect,
  GpuResp,
  MEM_ENTRY_SIZE,
  RECT_SIZE,
  decodeDisplayInfo,
  decodeHdr,
  encodeHdr,
  encodeRect,
} from './wire.ts';

/** The device answered a command with an error response. */
export class GpuCommandError extends Error {
  constructor(
    readonly command: number,
    readonly response: number,
  ) {
    super(`gpu: ${GPU_TYPE_NAMES[command] ?? command} answered ${GPU_TYPE_NAMES[response] ?? `0x${response.toString(16)}`}`);
    this.name = 'GpuCommandError';
  }
}

export interface GpuDriverOptions {
  readonly queueSize?: number;
  /**
   * Largest scatter list entry of a resource's backing (default 64 KiB): a resource's memory is
   * handed over as several entries, as a driver with scattered pages does.
   */
  readonly backingEntryBytes?: number;
  readonly log?: Logger;
}

/** A 2D resource and the guest memory backing it (rows packed, 4 bytes a pixel). */
export interface Surface {
  readonly id: number;
  readonly width: number;
  readonly height: number;
  readonly format: number;
  /** The backing as the driver writes it: a view of guest memory. */
  readonly pixels: Uint8Array;
}

export class GpuDriver {
  private nextResource = 1;
  private nextFence = 1n;
  private readonly backings = new Map<number, number>();
  private displayListeners: ((displays: DisplayOne[]) => void)[] = [];

  private constructor(
    readonly core: VirtioDriver,
    private readonly entryBytes: number,
  ) {}

  static async open(transport: DriverTransport, options: GpuDriverOptions = {}): Promise<GpuDriver> {
    const entryBytes = options.backingEntryBytes ?? 65536;
    if (!Number.isSafeInteger(entryBytes) || entryBytes < BYTES_PER_PIXEL) throw new RangeError(`backingEntryBytes ${entryBytes} is too small`);
    const core = await VirtioDriver.start(transport, {
      name: 'gpu',
      deviceId: DeviceId.GPU,
      features: FRAMEWORK_FEATURES | featureBit(GpuFeature.EDID),
      queues: 2,
      queueSize: options.queueSize,
      log: options.log,
    });
    const driver = new GpuDriver(core, entryBytes);
    core.onConfigChange(() => {
      driver.configChanged().catch((err: unknown) => core.log.warn({ err }, 'gpu: display change failed'));
    });
    return driver;
  }

  get hasEdid(): boolean {
    return hasFeature(this.core.features, GpuFeature.EDID);
  }

  /** GET_DISPLAY_INFO: each scanout's preferred mode and whether it is enabled. */
  async displayInfo(): Promise<DisplayOne[]> {
    const numScanouts = GPU_CONFIG.decode(await this.core.readConfig(0, GPU_CONFIG.size)).numScanouts;
    const resp = await this.command(GpuCmd.GET_DISPLAY_INFO, new Uint8Array(0), DISPLAY_INFO_SIZE);
    return decodeDisplayInfo(new DataView(resp.buffer, resp.byteOffset, resp.byteLength)).slice(0, numScanouts);
  }

  /** GET_EDID: the EDID block of scanout `index` (F_EDID). */
  async edid(index: number): Promise<Uint8Array> {
    const body = new Uint8Array(8);
    new DataView(body.buffer).setUint32(0, index, true);
    const resp = await this.command(GpuCmd.GET_EDID, body, EDID_RESPONSE_SIZE);
    const size = new DataView(resp.buffer, resp.byteOffset).getUint32(CTRL_HDR_SIZE, true);
    return resp.slice(CTRL_HDR_SIZE + 8, CTRL_HDR_SIZE + 8 + Math.min(size, 1024));
  }

  /** Called with the new displays after each display change the device signals. */
  onDisplayChange(listener: (displays: DisplayOne[]) => void): void {
    this.displayListeners.push(listener);
  }

  /** RESOURCE_CREATE_2D and RESOURCE_ATTACH_BACKING with memory from the DMA pool. */
  async createSurface(width: number, height: number, format: number = GpuFormat.B8G8R8X8_UNORM): Promise<Surface> {
    const id = this.nextResource++;
    const bytes = width * height * BYTES_PER_PIXEL;
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(bytes, 4096);
    if (addr === undefined) throw new Error(`gpu: DMA memory exhausted allocating a ${width}x${height} surface (${bytes} bytes)`);
    try {
      await this.command(GpuCmd.RESOURCE_CREATE_2D, u32s(id, format, width, height));
      const entries: number[] = [];
      for (let at = 0; at < bytes; at += this.entryBytes) entries.push(addr + at, Math.min(this.entryBytes, bytes - at));
      const table = new Uint8Array(8 + (entries.length / 2) * MEM_ENTRY_SIZE);
      const v = new DataView(table.buffer);
      v.setUint32(0, id, true);
      v.setUint32(4, entries.length / 2, true);
      for (let i = 0; i < entries.length; i += 2) {
        const at = 8 + (i / 2) * MEM_ENTRY_SIZE;
        v.setBigUint64(at, BigInt(entries[i]!), true);
        v.setUint32(at + 8, entries[i + 1]!, true);
      }
      await this.command(GpuCmd.RESOURCE_ATTACH_BACKING, table);
    } catch (err) {
      dma.free(addr);
      throw err;
    }
    this.backings.set(id, addr);
    return { id, width, height, format, pixels: memory.slice(addr, bytes) };
  }

  /** RESOURCE_DETACH_BACKING and RESOURCE_UNREF; the backing goes back to the DMA pool. */
  async destroySurface(surface: Surface): Promise<void> {
    await this.command(GpuCmd.RESOURCE_DETACH_BACKING, u32s(surface.id, 0));
    await this.command(GpuCmd.RESOURCE_UNREF, u32s(surface.id, 0));
    const addr = this.backings.get(surface.id);
    this.backings.delete(surface.id);
    if (addr !== undefined) this.core.transport.dma.free(addr);
  }

  /** SET_SCANOUT: scanout `index` shows `rect` of the surface (default all of it); undefined disables it. */
  async setScanout(index: number, surface: Surface | undefined, rect?: GpuRect): Promise<void> {
    const r = rect ?? (surface ? { x: 0, y: 0, width: surface.width, height: surface.height } : { x: 0, y: 0, width: 0, height: 0 });
    await this.command(GpuCmd.SET_SCANOUT, withRect(r, u32s(index, surface?.id ?? 0)));
  }

  /** TRANSFER_TO_HOST_2D of `rect` (default all) from the backing, then RESOURCE_FLUSH of it, fenced. */
  async update(surface: Surface, rect: GpuRect = { x: 0, y: 0, width: surface.width, height: surface.height }): Promise<void> {
    const offset = (rect.y * surface.width + rect.x) * BYTES_PER_PIXEL;
    const t = new Uint8Array(16);
    const v = new DataView(t.buffer);
    v.setBigUint64(0, BigInt(offset), true);
    v.setUint32(8, surface.id, true);
    await this.command(GpuCmd.TRANSFER_TO_HOST_2D, withRect(rect, t));
    await this.command(GpuCmd.RESOURCE_FLUSH, withRect(rect, u32s(surface.id, 0)), CTRL_HDR_SIZE, true);
  }

  /** UPDATE_CURSOR: the surface (already transferred) becomes the cursor image at (x, y); undefined hides it. */
  async updateCursor(surface: Surface | undefined, scanout: number, x: number, y: number, hotX = 0, hotY = 0): Promise<void> {
    await this.cursorCommand(GpuCmd.UPDATE_CURSOR, u32s(scanout, x, y, 0, surface?.id ?? 0, hotX, hotY, 0));
  }

  /** MOVE_CURSOR. */
  async moveCursor(scanout: number, x: number, y: number): Promise<void> {
    await this.cursorCommand(GpuCmd.MOVE_CURSOR, u32s(scanout, x, y, 0, 0, 0, 0, 0));
  }

  /**
   * One command on the control queue: the response (header included) when its type is an OK_*
   * answer, a GpuCommandError otherwise. `fence` asks for FLAG_FENCE and checks the fence comes back.
   */
  async command(type: number, body: Uint8Array, respSize = CTRL_HDR_SIZE, fence = false): Promise<Uint8Array> {
    return this.submit(0, type, body, respSize, fence);
  }

  /** Cursor commands carry no response buffer, as Linux sends them; QEMU answers none (used length 0). */
  private async cursorCommand(type: number, body: Uint8Array): Promise<void> {
    await this.submit(1, type, body, 0, false);
  }

  private async submit(queue: number, type: number, body: Uint8Array, respSize: number, fence: boolean): Promise<Uint8Array> {
    const { dma, memory } = this.core.transport;
    const reqSize = CTRL_HDR_SIZE + body.length;
    const addr = dma.alloc(reqSize + respSize, 8);
    if (addr === undefined) throw new Error(`gpu: DMA memory exhausted for a ${reqSize}-byte command`);
    try {
      const fenceId = fence ? this.nextFence++ : 0n;
      const req = new Uint8Array(reqSize);
      encodeHdr(new DataView(req.buffer), 0, { type, flags: fence ? GpuFlag.FENCE : 0, fenceId, ctxId: 0, ringIdx: 0 });
      req.set(body, CTRL_HDR_SIZE);
      memory.write(addr, req);
      const out: Segment[] = [{ addr, len: reqSize }];
      const used = await this.core.queue(queue).submit(out, respSize === 0 ? [] : [{ addr: addr + reqSize, len: respSize }]);
      if (respSize === 0) return new Uint8Array(0);
      const resp = memory.slice(addr + reqSize, respSize).slice();
      if (used < CTRL_HDR_SIZE) throw new Error(`gpu: ${GPU_TYPE_NAMES[type]} got a ${used}-byte response`);
      const hdr = decodeHdr(new DataView(resp.buffer));
      if (hdr.type >= GpuResp.ERR_UNSPEC || hdr.type < GpuResp.OK_NODATA) throw new GpuCommandError(type, hdr.type);
      if (fence && ((hdr.flags & GpuFlag.FENCE) === 0 || hdr.fenceId !== fenceId)) {
        throw new Error(`gpu: ${GPU_TYPE_NAMES[type]} was fenced with ${fenceId} and the response carries fence ${hdr.fenceId}`);
      }
      return resp;
    } finally {
      dma.free(addr);
    }
  }

  /** §5.7.4.1: a display event — read the displays again, then clear the event. */
  private async configChanged(): Promise<void> {
    const events = GPU_CONFIG.decode(await this.core.readConfig(0, GPU_CONFIG.size)).eventsRead;
    if ((events & EVENT_DISPLAY) === 0) return;
    const displays = await this.displayInfo();
    const clear = new Uint8Array(4);
    new DataView(clear.buffer).setUint32(0, EVENT_DISPLAY, true);
    await this.core.writeConfig(GPU_CONFIG.offset.eventsClear, clear);
    for (const listener of this.displayListeners) listener(displays);
  }

  async close(): Promise<void> {
    await this.core.close();
    for (const addr of this.backings.values()) this.core.transport.dma.free(addr);
    this.backings.clear();
    this.displayListeners = [];
  }
}

function u32s(...values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const v = new DataView(out.buffer);
  values.forEach((x, i) => v.setUint32(i * 4, x, true));
  return out;
}

/** A rectangle followed by `rest`: the layout of SET_SCANOUT, RESOURCE_FLUSH and TRANSFER_TO_HOST_2D. */
function withRect(r: GpuRect, rest: Uint8Array): Uint8Array {
  const out = new Uint8Array(RECT_SIZE + rest.length);
  encodeRect(new DataView(out.buffer), 0, r);
  out.set(rest, RECT_SIZE);
  return out;
}
