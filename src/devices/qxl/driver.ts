/**
 * A QXL driver (the guest half), over any bus that reaches a PCI function's BARs and its INTx
 * line (GuestBus: QEMU's qtest, or anything else that moves bytes): what Linux's qxl does at
 * load and when it draws, in the order qxl_dev.h and QEMU's qxl.c expect.
 *
 * - Discovery: the ROM (BAR 2) gives the RAM header's offset in the RAM BAR, the memslot
 *   layout and the surface 0 area; the RAM header holds the rings.
 * - Memslots: the RAM BAR below the header (commands and their data) and the whole VRAM BAR
 *   (the primary surface), each a QXLPHYSICAL slot with the ROM's generation.
 * - Commands go in the command or cursor ring; the device hands each back by its release id on
 *   the release ring, chained through release_info.next; this driver frees a command's memory
 *   then. The device announces releases, async completions and errors by INTx.
 */
import pino, { type Logger } from 'pino';
import type { ConfigAccess } from '../../transports/pci/config.ts';
import { Command, ConfigReg, formatBdf, readConfigSpace } from '../../transports/pci/config.ts';
import type { PciBar } from '../../transports/pci/bars.ts';
import type { GuestBus, InterruptEvent } from '../../transports/qtest/guest-bus.ts';
import {
  Bar,
  BITMAP_TOP_DOWN,
  BitmapFormat,
  BrushType,
  Chunk,
  ClipType,
  COMMAND_RING_SIZE,
  COMMAND_SIZE,
  CommandType,
  Copy,
  Cursor,
  CURSOR_RING_SIZE,
  CursorCmd,
  CursorCmdType,
  CursorType,
  Drawable,
  DrawType,
  Fill,
  Image,
  ImageType,
  Interrupt,
  IoPort,
  QXL_DEVICE_ID,
  QXL_VENDOR_ID,
  Ram,
  RECT_SIZE,
  type Rect,
  RELEASE_RING_SIZE,
  RingHeader,
  Rom,
  ROM_MAGIC,
  ROPD_OP_PUT,
  SurfaceCreate,
  SurfaceFormat,
  writeRect,
} from './wire.ts';

const PAGE = 4096;
/** QXL_EFFECT_OPAQUE: the drawable covers what is below it. */
const EFFECT_OPAQUE = 1;
const DEFAULT_TIMEOUT_MS = 10_000;

/** What the ROM says about the device. */
export interface RomInfo {
  readonly ramHeaderOffset: number;
  readonly surface0AreaSize: number;
  readonly nSurfaces: number;
  readonly slotsStart: number;
  readonly slotGenBits: number;
  readonly slotIdBits: number;
  readonly slotGeneration: number;
  /** The modes listed (x_res, y_res). */
  readonly modes: readonly { readonly width: number; readonly height: number }[];
}

export interface QxlDriverOptions {
  /** The interrupt line INTx pin `pin` of a function in `slot` reaches (q35IntxLine on a PC). */
  readonly intxLine: (slot: number, pin: number) => number;
  readonly log?: Logger;
  /** How long to wait for an interrupt the device owes (an async completion, room in a ring). */
  readonly timeoutMs?: number;
}

/** Page-granular first-fit allocation of a BAR range for commands and their data. */
class PageAllocator {
  private readonly used: Uint8Array;

  constructor(pages: number) {
    this.used = new Uint8Array(pages);
  }

  /** Offset of `bytes` of free space, or undefined while none is contiguous. */
  alloc(bytes: number): number | undefined {
    const n = Math.max(1, Math.ceil(bytes / PAGE));
    for (let start = 0, run = 0; start + run < this.used.length; ) {
      if (this.used[start + run] !== 0) {
        start += run + 1;
        run = 0;
      } else if (++run === n) {
        this.used.fill(1, start, start + n);
        return start * PAGE;
      }
    }
    return undefined;
  }

  free(offset: number, bytes: number): void {
    this.used.fill(0, offset / PAGE, offset / PAGE + Math.max(1, Math.ceil(bytes / PAGE)));
  }
}

interface Allocation {
  readonly offset: number;
  readonly bytes: number;
}

export class QxlDriver {
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private readonly ram: PciBar;
  private readonly vram: PciBar;
  private readonly io: PciBar;
  private readonly allocator: PageAllocator;
  private readonly mainSlot: number;
  private readonly surfacesSlot: number;
  /** Commands the device has not released: release id → the memory they hold. */
  private readonly inFlight = new Map<bigint, Allocation[]>();
  private nextReleaseId = 1n;
  private readonly waiters: { bits: number; resolve(): void }[] = [];
  private readonly unsubscribe: () => void;
  private servicing: Promise<void> = Promise.resolve();
  /** Errors the device raised (QXL_INTERRUPT_ERROR), counted. */
  errors = 0;
  primary: { readonly width: number; readonly height: number } | undefined;

  private constructor(
    private readonly bus: GuestBus,
    readonly target: number,
    bars: readonly PciBar[],
    readonly rom: RomInfo,
    readonly line: number,
    options: QxlDriverOptions,
  ) {
    this.log = (options.log ?? pino({ name: 'paravirt' })).child({ driver: `qxl ${formatBdf(target)}` });
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const bar = (i: number): PciBar => {
      const b = bars.find((x) => x.index === i);
      if (b === undefined) throw new Error(`QXL function ${formatBdf(target)} has no BAR ${i}`);
      return b;
    };
    this.ram = bar(Bar.RAM);
    this.vram = bar(Bar.VRAM);
    this.io = bar(Bar.IO);
    this.allocator = new PageAllocator(Math.floor(rom.ramHeaderOffset / PAGE));
    this.mainSlot = rom.slotsStart;
    this.surfacesSlot = rom.slotsStart + 1;
    this.unsubscribe = bus.onInterrupt((event) => this.onInterrupt(event));
  }

  /**
   * Take over the QXL function `target` whose BARs were assigned as `bars`: check its identity and
   * ROM, reset it, unmask its interrupts and register the two memslots.
   */
  static async open(bus: GuestBus, config: ConfigAccess, target: number, bars: readonly PciBar[], options: QxlDriverOptions): Promise<QxlDriver> {
    const name = formatBdf(target);
    const space = await readConfigSpace(config, target);
    const v = new DataView(space.buffer);
    if (v.getUint16(ConfigReg.VENDOR_ID, true) !== QXL_VENDOR_ID || v.getUint16(ConfigReg.DEVICE_ID, true) !== QXL_DEVICE_ID) {
      throw new Error(`PCI function ${name} is not a QXL device (1b36:0100)`);
    }
    const pin = space[ConfigReg.INTERRUPT_PIN];
    if (pin === 0) throw new Error(`QXL function ${name} has no INTx pin`);
    const command = v.getUint16(ConfigReg.COMMAND, true);
    await config.write(target, ConfigReg.COMMAND, 2, (command | Command.MEMORY | Command.IO) & ~Command.INTX_DISABLE);
    const romBar = bars.find((b) => b.index === Bar.ROM);
    if (romBar === undefined) throw new Error(`QXL function ${name} has no ROM BAR`);
    const rom = await readRom(bus, romBar);
    const driver = new QxlDriver(bus, target, bars, rom, options.intxLine((target >> 3) & 0x1f, pin), options);
    await driver.start();
    return driver;
  }

  private async start(): Promise<void> {
    await this.out(IoPort.RESET);
    await this.setHeader(Ram.INT_MASK, 0xffff_ffff);
    await this.addMemslot(this.mainSlot, this.ram.addr, this.ram.addr + this.rom.ramHeaderOffset);
    await this.addMemslot(this.surfacesSlot, this.vram.addr, this.vram.addr + this.vram.size);
  }

  // --- registers and memory ---

  private out(port: number, value = 0): Promise<void> {
    return this.bus.outU8(this.io.addr + port, value);
  }

  private header(at: number): Promise<number> {
    return this.bus.readU32(this.ram.addr + this.rom.ramHeaderOffset + at);
  }

  private setHeader(at: number, value: number): Promise<void> {
    return this.bus.writeU32(this.ram.addr + this.rom.ramHeaderOffset + at, value >>> 0);
  }

  /** QXLPHYSICAL of `offset` in memslot `slot`. */
  private physical(slot: number, offset: number): bigint {
    const shift = BigInt(64 - this.rom.slotGenBits - this.rom.slotIdBits);
    const high = (BigInt(slot) << BigInt(this.rom.slotGenBits)) | BigInt(this.rom.slotGeneration);
    return (high << shift) | BigInt(offset);
  }

  /**
   * Space for `bytes` in the main memslot. When none is free, released commands are collected,
   * and if none were, the device is asked to hand back what it holds (FLUSH_RELEASE; QEMU
   * batches releases) and its DISPLAY interrupt awaited.
   */
  private async alloc(bytes: number): Promise<Allocation> {
    for (;;) {
      const offset = this.allocator.alloc(bytes);
      if (offset !== undefined) return { offset, bytes };
      if ((await this.collectReleases()) > 0) continue;
      if (this.inFlight.size === 0) throw new RangeError(`${bytes} bytes do not fit the QXL RAM BAR's ${this.rom.ramHeaderOffset} bytes`);
      const released = this.waitFor(Interrupt.DISPLAY, 'releases');
      await this.out(IoPort.FLUSH_RELEASE);
      await released;
    }
  }

  // --- interrupts ---

  /** INTx rose: read and clear int_pending, re-evaluate the line (UPDATE_IRQ), and act on the bits. */
  private onInterrupt(event: InterruptEvent): void {
    if (event.line !== this.line || !event.raised) return;
    this.servicing = this.servicing.then(() => this.service()).catch((err: unknown) => this.log.error({ err }, 'servicing a QXL interrupt failed'));
  }

  private async service(): Promise<void> {
    const pending = await this.header(Ram.INT_PENDING);
    if (pending === 0) return;
    await this.setHeader(Ram.INT_PENDING, 0);
    await this.out(IoPort.UPDATE_IRQ);
    if (pending & Interrupt.ERROR) {
      this.errors++;
      this.log.warn('the QXL device reports a driver error');
    }
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      if (this.waiters[i].bits & pending) this.waiters.splice(i, 1)[0].resolve();
    }
  }

  /** Resolves on the next interrupt with one of `bits`, or rejects after the timeout. */
  private waitFor(bits: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const waiter = {
        bits,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`the QXL device did not interrupt for ${what} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** An _ASYNC port: written, then its QXL_INTERRUPT_IO_CMD awaited. */
  private async asyncIo(port: number, value = 0): Promise<void> {
    const done = this.waitFor(Interrupt.IO_CMD, `I/O port ${port}`);
    await this.out(port, value);
    await done;
  }

  private async addMemslot(slot: number, start: number, end: number): Promise<void> {
    const base = this.ram.addr + this.rom.ramHeaderOffset;
    await this.bus.writeU64(base + Ram.MEM_SLOT_START, BigInt(start));
    await this.bus.writeU64(base + Ram.MEM_SLOT_END, BigInt(end));
    await this.asyncIo(IoPort.MEMSLOT_ADD_ASYNC, slot);
  }

  // --- surfaces ---

  /** The primary surface, x8r8g8b8 with row 0 first, at the start of the VRAM BAR. */
  async createPrimary(width: number, height: number): Promise<void> {
    if (width * height * 4 > this.vram.size) throw new RangeError(`a ${width}x${height} primary surface does not fit the ${this.vram.size}-byte VRAM BAR`);
    const create = new Uint8Array(SurfaceCreate.SIZE);
    const v = new DataView(create.buffer);
    v.setUint32(SurfaceCreate.WIDTH, width, true);
    v.setUint32(SurfaceCreate.HEIGHT, height, true);
    v.setInt32(SurfaceCreate.STRIDE, width * 4, true);
    v.setUint32(SurfaceCreate.FORMAT, SurfaceFormat.X_RGB_32, true);
    v.setUint32(SurfaceCreate.TYPE, 0, true);
    v.setBigUint64(SurfaceCreate.MEM, this.physical(this.surfacesSlot, 0), true);
    await this.bus.write(this.ram.addr + this.rom.ramHeaderOffset + Ram.CREATE_SURFACE, create);
    await this.asyncIo(IoPort.CREATE_PRIMARY_ASYNC);
    this.primary = { width, height };
  }

  async destroyPrimary(): Promise<void> {
    await this.asyncIo(IoPort.DESTROY_PRIMARY_ASYNC);
    this.primary = undefined;
  }

  /** Have the device bring `area` of the primary surface up to date (the synchronous UPDATE_AREA). */
  async updateArea(area: Rect): Promise<void> {
    const bytes = new Uint8Array(RECT_SIZE);
    writeRect(new DataView(bytes.buffer), 0, area);
    await this.bus.write(this.ram.addr + this.rom.ramHeaderOffset + Ram.UPDATE_AREA, bytes);
    await this.setHeader(Ram.UPDATE_SURFACE, 0);
    await this.out(IoPort.UPDATE_AREA);
  }

  // --- drawing ---

  /** QXL_DRAW_FILL of `rect` with a solid x8r8g8b8 `color`. */
  async fill(rect: Rect, color: number): Promise<void> {
    const { bytes, view } = this.drawable(DrawType.FILL, rect, Fill.SIZE);
    view.setUint32(Drawable.U + Fill.BRUSH_TYPE, BrushType.SOLID, true);
    view.setUint32(Drawable.U + Fill.BRUSH_COLOR, color >>> 0, true);
    view.setUint16(Drawable.U + Fill.ROP_DESCRIPTOR, ROPD_OP_PUT, true);
    await this.submit(CommandType.DRAW, bytes, []);
  }

  /**
   * QXL_DRAW_COPY of a `width`×`height` x8r8g8b8 bitmap (`pixels`, row 0 first, 4 bytes a pixel)
   * to (x, y), through `clips` when given. The pixels go in a chain of chunks of at most
   * `chunkBytes` (whole rows each), as a driver short of contiguous memory would write them.
   */
  async copy(x: number, y: number, width: number, height: number, pixels: Uint8Array, options: { clips?: readonly Rect[]; chunkBytes?: number } = {}): Promise<void> {
    const stride = width * 4;
    if (pixels.length !== stride * height) throw new RangeError(`${pixels.length} bytes are not ${width}x${height} pixels of 4 bytes`);
    const held: Allocation[] = [];
    try {
      const rowsPerChunk = Math.max(1, Math.floor((options.chunkBytes ?? stride * height) / stride));
      // Chunks written last first, so each knows its successor.
      let next = 0n;
      for (let row = Math.ceil(height / rowsPerChunk) * rowsPerChunk - rowsPerChunk; row >= 0; row -= rowsPerChunk) {
        const data = pixels.subarray(row * stride, Math.min(height, row + rowsPerChunk) * stride);
        const a = await this.alloc(Chunk.DATA + data.length);
        held.push(a);
        const chunk = new Uint8Array(Chunk.DATA + data.length);
        const cv = new DataView(chunk.buffer);
        cv.setUint32(Chunk.DATA_SIZE, data.length, true);
        cv.setBigUint64(Chunk.NEXT, next, true);
        chunk.set(data, Chunk.DATA);
        await this.bus.write(this.ram.addr + a.offset, chunk);
        next = this.physical(this.mainSlot, a.offset);
      }
      const image = await this.alloc(Image.SIZE);
      held.push(image);
      const img = new Uint8Array(Image.SIZE);
      const iv = new DataView(img.buffer);
      iv.setUint8(Image.TYPE, ImageType.BITMAP);
      iv.setUint32(Image.WIDTH, width, true);
      iv.setUint32(Image.HEIGHT, height, true);
      iv.setUint8(Image.BITMAP_FORMAT, BitmapFormat.BIT_32);
      iv.setUint8(Image.BITMAP_FLAGS, BITMAP_TOP_DOWN);
      iv.setUint32(Image.BITMAP_X, width, true);
      iv.setUint32(Image.BITMAP_Y, height, true);
      iv.setUint32(Image.BITMAP_STRIDE, stride, true);
      iv.setBigUint64(Image.BITMAP_DATA, next, true);
      await this.bus.write(this.ram.addr + image.offset, img);

      const bbox = { top: y, left: x, bottom: y + height, right: x + width };
      const { bytes, view } = this.drawable(DrawType.COPY, bbox, Copy.SIZE);
      if (options.clips !== undefined) {
        const clips = await this.alloc(4 + Chunk.DATA + options.clips.length * RECT_SIZE);
        held.push(clips);
        const c = new Uint8Array(4 + Chunk.DATA + options.clips.length * RECT_SIZE);
        const clv = new DataView(c.buffer);
        clv.setUint32(0, options.clips.length, true);
        clv.setUint32(4 + Chunk.DATA_SIZE, options.clips.length * RECT_SIZE, true);
        options.clips.forEach((r, i) => writeRect(clv, 4 + Chunk.DATA + i * RECT_SIZE, r));
        await this.bus.write(this.ram.addr + clips.offset, c);
        view.setUint32(Drawable.CLIP_TYPE, ClipType.RECTS, true);
        view.setBigUint64(Drawable.CLIP_DATA, this.physical(this.mainSlot, clips.offset), true);
      }
      view.setBigUint64(Drawable.U + Copy.SRC_BITMAP, this.physical(this.mainSlot, image.offset), true);
      writeRect(view, Drawable.U + Copy.SRC_AREA, { top: 0, left: 0, bottom: height, right: width });
      view.setUint16(Drawable.U + Copy.ROP_DESCRIPTOR, ROPD_OP_PUT, true);
      await this.submit(CommandType.DRAW, bytes, held);
    } catch (err) {
      for (const a of held) this.allocator.free(a.offset, a.bytes);
      throw err;
    }
  }

  /** A drawable on the primary surface of `type` with bounding box `bbox` and `opSize` bytes of operation. */
  private drawable(type: number, bbox: Rect, opSize: number): { bytes: Uint8Array; view: DataView } {
    const bytes = new Uint8Array(Drawable.U + opSize);
    const view = new DataView(bytes.buffer);
    view.setUint32(Drawable.SURFACE_ID, 0, true);
    view.setUint8(Drawable.EFFECT, EFFECT_OPAQUE);
    view.setUint8(Drawable.TYPE, type);
    writeRect(view, Drawable.BBOX, bbox);
    view.setUint32(Drawable.CLIP_TYPE, ClipType.NONE, true);
    // surfaces_dest[3]: no surface this drawable depends on.
    for (let i = 0; i < 3; i++) view.setInt32(Drawable.SURFACES_DEST + 4 * i, -1, true);
    return { bytes, view };
  }

  // --- cursor ---

  /** QXL_CURSOR_SET: an alpha cursor of `width`×`height` a8r8g8b8 pixels at (x, y). */
  async cursorSet(x: number, y: number, width: number, height: number, argb: Uint8Array, hot = { x: 0, y: 0 }): Promise<void> {
    if (argb.length !== width * height * 4) throw new RangeError(`${argb.length} bytes are not a ${width}x${height} cursor`);
    const shape = await this.alloc(Cursor.SIZE + argb.length);
    try {
      const s = new Uint8Array(Cursor.SIZE + argb.length);
      const sv = new DataView(s.buffer);
      sv.setUint16(Cursor.TYPE, CursorType.ALPHA, true);
      sv.setUint16(Cursor.WIDTH, width, true);
      sv.setUint16(Cursor.HEIGHT, height, true);
      sv.setUint16(Cursor.HOT_X, hot.x, true);
      sv.setUint16(Cursor.HOT_Y, hot.y, true);
      sv.setUint32(Cursor.DATA_SIZE, argb.length, true);
      sv.setUint32(Cursor.CHUNK + Chunk.DATA_SIZE, argb.length, true);
      s.set(argb, Cursor.SIZE);
      await this.bus.write(this.ram.addr + shape.offset, s);
      const { bytes, view } = this.cursorCommand(CursorCmdType.SET, x, y);
      view.setUint8(CursorCmd.VISIBLE, 1);
      view.setBigUint64(CursorCmd.SHAPE, this.physical(this.mainSlot, shape.offset), true);
      await this.submit(CommandType.CURSOR, bytes, [shape]);
    } catch (err) {
      this.allocator.free(shape.offset, shape.bytes);
      throw err;
    }
  }

  async cursorMove(x: number, y: number): Promise<void> {
    await this.submit(CommandType.CURSOR, this.cursorCommand(CursorCmdType.MOVE, x, y).bytes, []);
  }

  async cursorHide(): Promise<void> {
    await this.submit(CommandType.CURSOR, this.cursorCommand(CursorCmdType.HIDE, 0, 0).bytes, []);
  }

  private cursorCommand(type: number, x: number, y: number): { bytes: Uint8Array; view: DataView } {
    const bytes = new Uint8Array(CursorCmd.SIZE);
    const view = new DataView(bytes.buffer);
    view.setUint8(CursorCmd.TYPE, type);
    view.setInt16(CursorCmd.POSITION_X, x, true);
    view.setInt16(CursorCmd.POSITION_Y, y, true);
    return { bytes, view };
  }

  // --- rings ---

  /**
   * Put a command (its structure `bytes`, which starts with release_info) in its ring, holding
   * `held` until the device releases it; notify the device if it asked (notify_on_prod).
   */
  private async submit(type: number, bytes: Uint8Array, held: Allocation[]): Promise<void> {
    const own = await this.alloc(bytes.length);
    const id = this.nextReleaseId++;
    new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(0, id, true);
    await this.bus.write(this.ram.addr + own.offset, bytes);
    this.inFlight.set(id, [own, ...held]);
    const ring = type === CommandType.CURSOR ? Ram.CURSOR_RING : Ram.CMD_RING;
    const items = type === CommandType.CURSOR ? CURSOR_RING_SIZE : COMMAND_RING_SIZE;
    let prod = await this.header(ring + RingHeader.PROD);
    while (((prod - (await this.header(ring + RingHeader.CONS))) >>> 0) >= items) {
      // Full: ask to hear when the device takes one (notify_on_cons), then look again.
      const room = this.waitFor(ring === Ram.CURSOR_RING ? Interrupt.CURSOR : Interrupt.DISPLAY, 'room in a ring');
      await this.setHeader(ring + RingHeader.NOTIFY_ON_CONS, (await this.header(ring + RingHeader.CONS)) + 1);
      await room;
      prod = await this.header(ring + RingHeader.PROD);
    }
    const item = new Uint8Array(COMMAND_SIZE);
    const iv = new DataView(item.buffer);
    iv.setBigUint64(0, this.physical(this.mainSlot, own.offset), true);
    iv.setUint32(8, type, true);
    await this.bus.write(this.ram.addr + this.rom.ramHeaderOffset + ring + RingHeader.SIZE + (prod % items) * COMMAND_SIZE, item);
    prod = (prod + 1) >>> 0;
    await this.setHeader(ring + RingHeader.PROD, prod);
    if (prod === (await this.header(ring + RingHeader.NOTIFY_ON_PROD))) await this.out(ring === Ram.CURSOR_RING ? IoPort.NOTIFY_CURSOR : IoPort.NOTIFY_CMD);
  }

  /** Commands of the command and cursor rings the device has not taken yet. */
  async queued(): Promise<{ readonly commands: number; readonly cursor: number }> {
    const count = async (ring: number): Promise<number> => ((await this.header(ring + RingHeader.PROD)) - (await this.header(ring + RingHeader.CONS))) >>> 0;
    return { commands: await count(Ram.CMD_RING), cursor: await count(Ram.CURSOR_RING) };
  }

  /** Commands the device has not handed back yet. */
  get outstanding(): number {
    return this.inFlight.size;
  }

  /**
   * Take what the release ring holds (qxl_garbage_collect): each item is the id of a released
   * command whose release_info.next names the next one released with it, 0 ending the chain.
   */
  async collectReleases(): Promise<number> {
    const ring = Ram.RELEASE_RING;
    let freed = 0;
    for (;;) {
      const cons = await this.header(ring + RingHeader.CONS);
      if (cons === (await this.header(ring + RingHeader.PROD))) {
        await this.setHeader(ring + RingHeader.NOTIFY_ON_PROD, cons + 1);
        return freed;
      }
      let id = await this.bus.readU64(this.ram.addr + this.rom.ramHeaderOffset + ring + RingHeader.SIZE + (cons % RELEASE_RING_SIZE) * 8);
      await this.setHeader(ring + RingHeader.CONS, cons + 1);
      for (let links = 0; id !== 0n; links++) {
        const held = this.inFlight.get(id);
        if (held === undefined || links > this.inFlight.size) throw new Error(`the QXL device released id ${id}, which is not a command in flight`);
        const next = await this.bus.readU64(this.ram.addr + held[0].offset);
        for (const a of held) this.allocator.free(a.offset, a.bytes);
        this.inFlight.delete(id);
        freed++;
        id = next;
      }
    }
  }

  /** Ask the device for every release it holds back, and take them. */
  async flushReleases(): Promise<number> {
    await this.out(IoPort.FLUSH_RELEASE);
    return this.collectReleases();
  }

  async close(): Promise<void> {
    this.unsubscribe();
    await this.servicing;
    await this.out(IoPort.RESET);
  }
}

/** Read and check the ROM (qxl_check_device). */
async function readRom(bus: GuestBus, rom: PciBar): Promise<RomInfo> {
  const head = await bus.read(rom.addr, Rom.SIZE);
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const magic = v.getUint32(Rom.MAGIC, true);
  if (magic !== ROM_MAGIC) throw new Error(`the QXL ROM's magic is 0x${magic.toString(16)}, not "QXRO"`);
  const modesOffset = v.getUint32(Rom.MODES_OFFSET, true);
  const count = await bus.readU32(rom.addr + modesOffset);
  if (modesOffset + 4 + count * 32 > rom.size) throw new Error(`the QXL ROM lists ${count} modes, more than it holds`);
  const modes = [];
  for (let i = 0; i < count; i++) {
    const at = rom.addr + modesOffset + 4 + i * 32;
    modes.push({ width: await bus.readU32(at + 4), height: await bus.readU32(at + 8) });
  }
  return {
    ramHeaderOffset: v.getUint32(Rom.RAM_HEADER_OFFSET, true),
    surface0AreaSize: v.getUint32(Rom.SURFACE0_AREA_SIZE, true),
    nSurfaces: v.getUint32(Rom.N_SURFACES, true),
    slotsStart: v.getUint8(Rom.SLOTS_START),
    slotGenBits: v.getUint8(Rom.SLOT_GEN_BITS),
    slotIdBits: v.getUint8(Rom.SLOT_ID_BITS),
    slotGeneration: v.getUint8(Rom.SLOT_GENERATION),
    modes,
  };
}
