/**
 * A QXL driver's view of paravirt's QxlDevice in-process, for unit tests: BARs placed by writing
 * configuration space, ports written through BAR 3, and the RAM/VRAM BARs as the bytes the guest
 * would map. Commands are laid out the way Linux's qxl lays them out.
 */
import { Command, ConfigReg } from '../../../src/transports/pci/config.ts';
import { QxlDevice } from '../../../src/devices/qxl/device.ts';
import { Bar, COMMAND_SIZE, Chunk, Copy, CursorCmd, Cursor, Drawable, Fill, Image, IoPort, Ram, RingHeader, SurfaceCreate } from '../../../src/devices/qxl/wire.ts';

export const RAM_BASE = 0xe000_0000;
export const VRAM_BASE = 0xe100_0000;
export const IO_BASE = 0xc000;
export const MAIN_SLOT = 1;
export const SURFACES_SLOT = 2;

/** A QXLPHYSICAL: slot id and generation 0 in the high bits, the offset in the low 48. */
export function phys(slot: number, offset: number): bigint {
  return (BigInt(slot) << 56n) | BigInt(offset);
}

export class QxlBus {
  readonly device: QxlDevice;
  readonly ram: DataView;
  readonly vram: DataView;
  readonly header: number;

  constructor(options: { ramSize?: number; vramSize?: number; width?: number; height?: number } = {}) {
    this.device = new QxlDevice({ ramSize: options.ramSize ?? 1 << 20, vramSize: options.vramSize ?? 1 << 20, width: options.width ?? 64, height: options.height ?? 48 });
    const cfg = new Uint8Array(4);
    const dv = new DataView(cfg.buffer);
    for (const [bar, base] of [
      [Bar.RAM, RAM_BASE],
      [Bar.VRAM, VRAM_BASE],
      [Bar.IO, IO_BASE],
    ] as const) {
      dv.setUint32(0, base, true);
      this.device.pci.writeConfig(ConfigReg.BAR0 + 4 * bar, cfg);
    }
    dv.setUint32(0, Command.MEMORY | Command.IO, true);
    this.device.pci.writeConfig(ConfigReg.COMMAND, cfg.subarray(0, 2));
    const map = (bar: typeof Bar.RAM | typeof Bar.VRAM): DataView => {
      const bytes = this.device.barBytes(bar);
      return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    };
    this.ram = map(Bar.RAM);
    this.vram = map(Bar.VRAM);
    this.header = this.device.layout.ramHeaderOffset;
  }

  out(port: number, value = 0): void {
    this.device.pci.bars[Bar.IO]!.write(port, Uint8Array.of(value));
  }

  rom(offset: number): number {
    const d = new Uint8Array(4);
    this.device.pci.bars[Bar.ROM]!.read(offset, d);
    return new DataView(d.buffer).getUint32(0, true);
  }

  hdr(at: number): number {
    return this.ram.getUint32(this.header + at, true);
  }

  setHdr(at: number, value: number): void {
    this.ram.setUint32(this.header + at, value >>> 0, true);
  }

  /** What Linux's qxl does at load: reset, interrupts unmasked, the main and surfaces memslots. */
  init(): void {
    this.out(IoPort.RESET);
    this.setHdr(Ram.INT_MASK, 0xffff_ffff);
    this.memslot(MAIN_SLOT, RAM_BASE, RAM_BASE + this.device.layout.surface0AreaSize);
    this.memslot(SURFACES_SLOT, VRAM_BASE, VRAM_BASE + this.vram.byteLength);
  }

  memslot(id: number, start: number, end: number): void {
    this.ram.setBigUint64(this.header + Ram.MEM_SLOT_START, BigInt(start), true);
    this.ram.setBigUint64(this.header + Ram.MEM_SLOT_END, BigInt(end), true);
    this.out(IoPort.MEMSLOT_ADD_ASYNC, id);
  }

  /** The primary surface at `offset` of VRAM, x8r8g8b8. */
  createPrimary(width: number, height: number, offset = 0, stride = width * 4): void {
    const at = this.header + Ram.CREATE_SURFACE;
    this.ram.setUint32(at + SurfaceCreate.WIDTH, width, true);
    this.ram.setUint32(at + SurfaceCreate.HEIGHT, height, true);
    this.ram.setInt32(at + SurfaceCreate.STRIDE, stride, true);
    this.ram.setUint32(at + SurfaceCreate.FORMAT, 32, true);
    this.ram.setUint32(at + SurfaceCreate.FLAGS, 1, true);
    this.ram.setUint32(at + SurfaceCreate.TYPE, 0, true);
    this.ram.setBigUint64(at + SurfaceCreate.MEM, phys(SURFACES_SLOT, offset), true);
    this.out(IoPort.CREATE_PRIMARY_ASYNC);
  }

  /** Put a command in a ring and notify, as qxl_ring_push does. */
  push(ring: number, data: bigint, type: number): void {
    this.produce(ring, data, type);
    if (this.hdr(ring + RingHeader.PROD) === this.hdr(ring + RingHeader.NOTIFY_ON_PROD)) this.out(IoPort.NOTIFY_CMD);
  }

  /** Put a command in a ring without notifying (a driver filling the ring before one NOTIFY_CMD). */
  produce(ring: number, data: bigint, type: number): void {
    const prod = this.hdr(ring + RingHeader.PROD);
    const item = this.header + ring + RingHeader.SIZE + (prod % 32) * COMMAND_SIZE;
    this.ram.setBigUint64(item, data, true);
    this.ram.setUint32(item + 8, type, true);
    this.setHdr(ring + RingHeader.PROD, prod + 1);
  }

  /** The release ids the device published, popped as qxl_garbage_collect does (following next links). */
  popReleases(): bigint[] {
    const ring = Ram.RELEASE_RING;
    const ids: bigint[] = [];
    for (;;) {
      const cons = this.hdr(ring + RingHeader.CONS);
      if (cons === this.hdr(ring + RingHeader.PROD)) {
        this.setHdr(ring + RingHeader.NOTIFY_ON_PROD, cons + 1);
        return ids;
      }
      ids.push(this.ram.getBigUint64(this.header + ring + RingHeader.SIZE + (cons % 8) * 8, true));
      this.setHdr(ring + RingHeader.CONS, cons + 1);
    }
  }

  /** A FILL drawable at RAM offset `at`, solid `color` over `rect` (no clip). */
  fill(at: number, id: bigint, rect: { top: number; left: number; bottom: number; right: number }, color: number): bigint {
    this.drawable(at, id, 1, rect, 0, 0n);
    const u = at + Drawable.U;
    this.ram.setUint32(u + Fill.BRUSH_TYPE, 1, true);
    this.ram.setUint32(u + Fill.BRUSH_COLOR, color, true);
    this.ram.setUint16(u + Fill.ROP_DESCRIPTOR, 1 << 3, true);
    this.ram.setBigUint64(u + Fill.MASK_BITMAP, 0n, true);
    return phys(MAIN_SLOT, at);
  }

  drawable(at: number, id: bigint, type: number, bbox: { top: number; left: number; bottom: number; right: number }, clipType: number, clipData: bigint): void {
    new Uint8Array(this.ram.buffer, this.ram.byteOffset + at, Drawable.U + 64).fill(0);
    this.ram.setBigUint64(at, id, true);
    this.ram.setUint32(at + Drawable.SURFACE_ID, 0, true);
    this.ram.setUint8(at + Drawable.EFFECT, 1);
    this.ram.setUint8(at + Drawable.TYPE, type);
    this.rect(at + Drawable.BBOX, bbox);
    this.ram.setUint32(at + Drawable.CLIP_TYPE, clipType, true);
    this.ram.setBigUint64(at + Drawable.CLIP_DATA, clipData, true);
  }

  rect(at: number, r: { top: number; left: number; bottom: number; right: number }): void {
    this.ram.setInt32(at, r.top, true);
    this.ram.setInt32(at + 4, r.left, true);
    this.ram.setInt32(at + 8, r.bottom, true);
    this.ram.setInt32(at + 12, r.right, true);
  }

  /** A data chunk at `at` holding `data`, linked to `next`. */
  chunk(at: number, data: Uint8Array, next: bigint): bigint {
    this.ram.setUint32(at + Chunk.DATA_SIZE, data.length, true);
    this.ram.setBigUint64(at + Chunk.PREV, 0n, true);
    this.ram.setBigUint64(at + Chunk.NEXT, next, true);
    new Uint8Array(this.ram.buffer, this.ram.byteOffset + at + Chunk.DATA, data.length).set(data);
    return phys(MAIN_SLOT, at);
  }

  /** A COPY of a 32-bit top-down bitmap image at `imageAt` whose data is the chunk list at `chunks`. */
  copy(at: number, id: bigint, bbox: { top: number; left: number; bottom: number; right: number }, imageAt: number, width: number, height: number, chunks: bigint, clip?: bigint): bigint {
    this.drawable(at, id, 3, bbox, clip === undefined ? 0 : 1, clip ?? 0n);
    const u = at + Drawable.U;
    this.ram.setBigUint64(u + Copy.SRC_BITMAP, phys(MAIN_SLOT, imageAt), true);
    this.rect(u + Copy.SRC_AREA, { top: 0, left: 0, bottom: height, right: width });
    this.ram.setUint16(u + Copy.ROP_DESCRIPTOR, 1 << 3, true);
    new Uint8Array(this.ram.buffer, this.ram.byteOffset + imageAt, Image.SIZE).fill(0);
    this.ram.setUint8(imageAt + Image.TYPE, 0);
    this.ram.setUint32(imageAt + Image.WIDTH, width, true);
    this.ram.setUint32(imageAt + Image.HEIGHT, height, true);
    this.ram.setUint8(imageAt + Image.BITMAP_FORMAT, 8);
    this.ram.setUint8(imageAt + Image.BITMAP_FLAGS, 1 << 2);
    this.ram.setUint32(imageAt + Image.BITMAP_X, width, true);
    this.ram.setUint32(imageAt + Image.BITMAP_Y, height, true);
    this.ram.setUint32(imageAt + Image.BITMAP_STRIDE, width * 4, true);
    this.ram.setBigUint64(imageAt + Image.BITMAP_DATA, chunks, true);
    return phys(MAIN_SLOT, at);
  }

  /** A cursor SET command at `at` with an alpha shape at `shapeAt`. */
  cursorSet(at: number, id: bigint, shapeAt: number, x: number, y: number, argb: Uint8Array, width: number, height: number): bigint {
    new Uint8Array(this.ram.buffer, this.ram.byteOffset + at, CursorCmd.SIZE).fill(0);
    this.ram.setBigUint64(at, id, true);
    this.ram.setUint8(at + CursorCmd.TYPE, 0);
    this.ram.setInt16(at + CursorCmd.POSITION_X, x, true);
    this.ram.setInt16(at + CursorCmd.POSITION_Y, y, true);
    this.ram.setUint8(at + CursorCmd.VISIBLE, 1);
    this.ram.setBigUint64(at + CursorCmd.SHAPE, phys(MAIN_SLOT, shapeAt), true);
    this.ram.setUint16(shapeAt + Cursor.TYPE, 0, true);
    this.ram.setUint16(shapeAt + Cursor.WIDTH, width, true);
    this.ram.setUint16(shapeAt + Cursor.HEIGHT, height, true);
    this.ram.setUint32(shapeAt + Cursor.DATA_SIZE, argb.length, true);
    this.chunk(shapeAt + Cursor.CHUNK, argb, 0n);
    return phys(MAIN_SLOT, at);
  }
}
