/**
 * The QXL ROM (BAR 2, struct qxl_rom) and the layout of the RAM BAR it describes, as QEMU's
 * init_qxl_rom lays them out: the RAM BAR holds the surface 0 area from offset 0, I/O pages after
 * it, and the RAM header in its last pages; the ROM lists the modes that fit the surface 0 area,
 * the memslot layout, and the client's monitors configuration (the display size the guest
 * should pick), guarded by the CRC Linux checks.
 */
import { MODE_SIZE, Ram, Rom, ROM_MAGIC } from './wire.ts';
import { NUM_MEMSLOTS, SLOT_GEN_BITS, SLOT_ID_BITS, SLOTS_START } from './memslots.ts';

/** ROM BAR size (QEMU's QXL_ROM_SZ). */
export const ROM_SIZE = 8192;
/** Surfaces a driver may create (rom.n_surfaces; QEMU's default). */
export const N_SURFACES = 1024;
const PAGE = 4096;
/** Modes offered besides the configured one, as QEMU's list has them (those that fit are kept). */
const STANDARD_MODES: readonly (readonly [number, number])[] = [
  [640, 480],
  [800, 600],
  [1024, 768],
  [1280, 720],
  [1280, 800],
  [1280, 1024],
  [1440, 900],
  [1600, 900],
  [1600, 1200],
  [1680, 1050],
  [1920, 1080],
  [1920, 1200],
];

export interface RamLayout {
  readonly ramSize: number;
  /** Bytes from offset 0 of the RAM BAR the driver may use for surface 0 and its objects. */
  readonly surface0AreaSize: number;
  readonly ramHeaderOffset: number;
}

/** QEMU's split: a quarter of the RAM BAR for the surface 0 area (16 MiB of 64), the header at the end. */
export function ramLayout(ramSize: number): RamLayout {
  const headerSize = Math.ceil(Ram.SIZE / PAGE) * PAGE;
  return { ramSize, surface0AreaSize: ramSize / 4, ramHeaderOffset: ramSize - headerSize };
}

/** CRC-32 as Linux's crc32(0, ...) computes it: reflected 0xedb88320, seed 0, no final inversion. */
export function crc32Raw(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb8_8320 : crc >>> 1;
  }
  return crc >>> 0;
}

/** The ROM for a RAM BAR laid out as `layout` and a display of `width`×`height`. */
export function buildRom(layout: RamLayout, width: number, height: number): Uint8Array {
  const rom = new Uint8Array(ROM_SIZE);
  const v = new DataView(rom.buffer);
  v.setUint32(Rom.MAGIC, ROM_MAGIC, true);
  v.setUint32(Rom.MODES_OFFSET, Rom.SIZE, true);
  v.setUint32(Rom.DRAW_AREA_OFFSET, 0, true);
  v.setUint32(Rom.SURFACE0_AREA_SIZE, layout.surface0AreaSize, true);
  v.setUint32(Rom.PAGES_OFFSET, layout.surface0AreaSize, true);
  v.setUint32(Rom.NUM_IO_PAGES, (layout.ramHeaderOffset - layout.surface0AreaSize) / PAGE, true);
  v.setUint32(Rom.RAM_HEADER_OFFSET, layout.ramHeaderOffset, true);
  v.setUint32(Rom.N_SURFACES, N_SURFACES, true);
  v.setUint8(Rom.SLOTS_START, SLOTS_START);
  v.setUint8(Rom.SLOTS_END, NUM_MEMSLOTS - 1);
  v.setUint8(Rom.SLOT_GEN_BITS, SLOT_GEN_BITS);
  v.setUint8(Rom.SLOT_ID_BITS, SLOT_ID_BITS);
  v.setUint8(Rom.SLOT_GENERATION, 0);

  const fits = ([w, h]: readonly [number, number]): boolean => w * h * 4 <= layout.surface0AreaSize;
  const modes = [[width, height] as const, ...STANDARD_MODES.filter(([w, h]) => w !== width || h !== height)].filter(fits);
  v.setUint32(Rom.SIZE, modes.length, true);
  modes.forEach(([w, h], i) => {
    const at = Rom.SIZE + 4 + i * MODE_SIZE;
    // id, x_res, y_res, bits, stride, x_mili, y_mili (millimetres at 96 dpi), orientation
    [i, w, h, 32, w * 4, Math.round((w * 25.4) / 96), Math.round((h * 25.4) / 96), 0].forEach((value, k) => v.setUint32(at + 4 * k, value, true));
  });

  v.setUint8(Rom.CLIENT_PRESENT, 1);
  setClientMonitor(rom, width, height);
  return rom;
}

/**
 * One client monitor of `width`×`height` in the ROM, with the CRC Linux checks: the guest's
 * preferred mode is that size (QEMU's qxl_client_monitors_config does the same for a spice client).
 */
export function setClientMonitor(rom: Uint8Array, width: number, height: number): void {
  const v = new DataView(rom.buffer, rom.byteOffset, rom.byteLength);
  const heads = Rom.CLIENT_MONITORS_CONFIG;
  rom.fill(0, heads, heads + Rom.CLIENT_MONITORS_CONFIG_SIZE);
  v.setUint16(heads, 1, true);
  // struct qxl_urect: top, left, bottom, right
  v.setUint32(heads + 12, height, true);
  v.setUint32(heads + 16, width, true);
  v.setUint32(Rom.CLIENT_MONITORS_CONFIG_CRC, crc32Raw(rom.subarray(heads, heads + Rom.CLIENT_MONITORS_CONFIG_SIZE)), true);
}
