/**
 * The QXL device interface as the guest sees it: spice-protocol's qxl_dev.h (a copy sits in
 * Linux's drivers/gpu/drm/qxl/qxl_dev.h) and what QEMU's hw/display/qxl.c does with it. Every
 * structure there is packed (#pragma pack(1)) and little-endian; the offsets below are those of
 * the packed layouts.
 *
 * BARs (QXL_*_RANGE_INDEX): 0 RAM (the driver's "vram": free memory, then the RAM header at its
 * end), 1 VRAM (surfaces), 2 ROM, 3 I/O ports.
 */

/** PCI identity (QEMU's qxl): Red Hat's vendor 0x1b36, device QXL_DEVICE_ID_STABLE. */
export const QXL_VENDOR_ID = 0x1b36;
export const QXL_DEVICE_ID = 0x0100;
/** QXL_REVISION_STABLE_V12: Linux's qxl refuses anything older (it needs client monitors config). */
export const QXL_REVISION = 4;
/** Subsystem as QEMU gives it (Red Hat / QEMU). */
export const QXL_SUBSYSTEM_VENDOR_ID = 0x1af4;
export const QXL_SUBSYSTEM_ID = 0x1100;
/** PCI class codes: display/VGA for a primary card, display/other for a secondary one (QEMU's `qxl`). */
export const CLASS_DISPLAY_VGA = 0x03_00_00;
export const CLASS_DISPLAY_OTHER = 0x03_80_00;

export const Bar = { RAM: 0, VRAM: 1, ROM: 2, IO: 3 } as const;

/** "QXRO" and "QXRA" read as little-endian words. */
export const ROM_MAGIC = 0x4f52_5851;
export const RAM_MAGIC = 0x4152_5851;

/** I/O port offsets in BAR 3 (qxl-1..qxl-4, append only). */
export const IoPort = {
  NOTIFY_CMD: 0,
  NOTIFY_CURSOR: 1,
  UPDATE_AREA: 2,
  UPDATE_IRQ: 3,
  NOTIFY_OOM: 4,
  RESET: 5,
  SET_MODE: 6,
  LOG: 7,
  MEMSLOT_ADD: 8,
  MEMSLOT_DEL: 9,
  DETACH_PRIMARY: 10,
  ATTACH_PRIMARY: 11,
  CREATE_PRIMARY: 12,
  DESTROY_PRIMARY: 13,
  DESTROY_SURFACE_WAIT: 14,
  DESTROY_ALL_SURFACES: 15,
  UPDATE_AREA_ASYNC: 16,
  MEMSLOT_ADD_ASYNC: 17,
  CREATE_PRIMARY_ASYNC: 18,
  DESTROY_PRIMARY_ASYNC: 19,
  DESTROY_SURFACE_ASYNC: 20,
  DESTROY_ALL_SURFACES_ASYNC: 21,
  FLUSH_SURFACES_ASYNC: 22,
  FLUSH_RELEASE: 23,
  MONITORS_CONFIG_ASYNC: 24,
  /** Ports defined; BAR 3 is the next power of two above twice this, as QEMU sizes it. */
  COUNT: 25,
} as const;
export const IO_BAR_SIZE = 32;

/** Bits of int_pending / int_mask. */
export const Interrupt = {
  DISPLAY: 1 << 0,
  CURSOR: 1 << 1,
  IO_CMD: 1 << 2,
  ERROR: 1 << 3,
  CLIENT: 1 << 4,
  CLIENT_MONITORS_CONFIG: 1 << 5,
} as const;

/** struct qxl_rom. */
export const Rom = {
  MAGIC: 0,
  ID: 4,
  UPDATE_ID: 8,
  COMPRESSION_LEVEL: 12,
  LOG_LEVEL: 16,
  MODE: 20,
  MODES_OFFSET: 24,
  NUM_IO_PAGES: 28,
  PAGES_OFFSET: 32,
  DRAW_AREA_OFFSET: 36,
  SURFACE0_AREA_SIZE: 40,
  RAM_HEADER_OFFSET: 44,
  MM_CLOCK: 48,
  N_SURFACES: 52,
  FLAGS: 56,
  SLOTS_START: 64,
  SLOTS_END: 65,
  SLOT_GEN_BITS: 66,
  SLOT_ID_BITS: 67,
  SLOT_GENERATION: 68,
  CLIENT_PRESENT: 69,
  CLIENT_CAPABILITIES: 70,
  CLIENT_MONITORS_CONFIG_CRC: 128,
  /** struct { u16 count; u16 padding; struct qxl_urect heads[64]; } */
  CLIENT_MONITORS_CONFIG: 132,
  CLIENT_MONITORS_CONFIG_SIZE: 4 + 64 * 16,
  SIZE: 1160,
} as const;
/** Heads the ROM's client monitors configuration holds. */
export const ROM_MAX_HEADS = 64;
/** struct qxl_mode: id, x_res, y_res, bits, stride, x_mili, y_mili, orientation (u32 each). */
export const MODE_SIZE = 32;

/** struct qxl_ram_header, offsets from ram_header_offset. */
export const Ram = {
  MAGIC: 0,
  INT_PENDING: 4,
  INT_MASK: 8,
  LOG_BUF: 12,
  LOG_BUF_SIZE: 4096,
  CMD_RING: 4108,
  CURSOR_RING: 4660,
  RELEASE_RING: 5172,
  UPDATE_AREA: 5256,
  UPDATE_SURFACE: 5272,
  MEM_SLOT_START: 5276,
  MEM_SLOT_END: 5284,
  CREATE_SURFACE: 5292,
  FLAGS: 5332,
  MONITORS_CONFIG: 5340,
  GUEST_CAPABILITIES: 5348,
  SIZE: 5412,
} as const;

/** struct qxl_ring_header, then the items. */
export const RingHeader = { NUM_ITEMS: 0, PROD: 4, NOTIFY_ON_PROD: 8, CONS: 12, NOTIFY_ON_CONS: 16, SIZE: 20 } as const;
export const COMMAND_RING_SIZE = 32;
export const CURSOR_RING_SIZE = 32;
export const RELEASE_RING_SIZE = 8;
/** struct qxl_command: data (a memslot address), type, padding. */
export const COMMAND_SIZE = 16;

/** struct qxl_surface_create (in the RAM header for CREATE_PRIMARY). */
export const SurfaceCreate = { WIDTH: 0, HEIGHT: 4, STRIDE: 8, FORMAT: 12, POSITION: 16, MOUSE_MODE: 20, FLAGS: 24, TYPE: 28, MEM: 32, SIZE: 40 } as const;

export const CommandType = { NOP: 0, DRAW: 1, UPDATE: 2, CURSOR: 3, MESSAGE: 4, SURFACE: 5 } as const;

/** Every command's structure starts with union qxl_release_info: the id the device hands back. */
export const RELEASE_INFO_SIZE = 8;

/** enum SpiceSurfaceFmt. */
export const SurfaceFormat = { X_RGB_32: 32, A_RGB_32: 96, RGB_555_16: 16, RGB_565_16: 80 } as const;

/** struct qxl_rect: top, left, bottom, right (i32). */
export const RECT_SIZE = 16;

/** struct qxl_drawable. */
export const Drawable = {
  SURFACE_ID: 8,
  EFFECT: 12,
  TYPE: 13,
  SELF_BITMAP: 14,
  BBOX: 31,
  CLIP_TYPE: 47,
  CLIP_DATA: 51,
  MM_TIME: 59,
  /** int32 surfaces_dest[3]: surfaces the drawable reads (-1: none). */
  SURFACES_DEST: 63,
  /** The union of the drawing operations. */
  U: 123,
} as const;

export const DrawType = {
  NOP: 0,
  FILL: 1,
  OPAQUE: 2,
  COPY: 3,
  COPY_BITS: 4,
  BLEND: 5,
  BLACKNESS: 6,
  WHITENESS: 7,
  INVERS: 8,
  ROP3: 9,
  STROKE: 10,
  TEXT: 11,
  TRANSPARENT: 12,
  ALPHA_BLEND: 13,
  COMPOSITE: 14,
} as const;

/** struct qxl_fill, from the drawable's union. */
export const Fill = { BRUSH_TYPE: 0, BRUSH_COLOR: 4, ROP_DESCRIPTOR: 20, MASK_BITMAP: 31, SIZE: 39 } as const;
/** struct qxl_copy, from the drawable's union. */
export const Copy = { SRC_BITMAP: 0, SRC_AREA: 8, ROP_DESCRIPTOR: 24, SCALE_MODE: 26, MASK_BITMAP: 36, SIZE: 44 } as const;

export const BrushType = { NONE: 0, SOLID: 1, PATTERN: 2 } as const;
/** SPICE_ROPD_OP_PUT: the source replaces the destination. */
export const ROPD_OP_PUT = 1 << 3;
export const ClipType = { NONE: 0, RECTS: 1 } as const;

/** struct qxl_clip_rects: num_rects, then a data chunk of rects. */
export const CLIP_RECTS_CHUNK = 4;

/** struct qxl_data_chunk: data_size, prev_chunk, next_chunk, data. */
export const Chunk = { DATA_SIZE: 0, PREV: 4, NEXT: 12, DATA: 20 } as const;

/** struct qxl_image: descriptor, then the bitmap. */
export const Image = {
  ID: 0,
  TYPE: 8,
  FLAGS: 9,
  WIDTH: 10,
  HEIGHT: 14,
  BITMAP_FORMAT: 18,
  BITMAP_FLAGS: 19,
  BITMAP_X: 20,
  BITMAP_Y: 24,
  BITMAP_STRIDE: 28,
  BITMAP_PALETTE: 32,
  BITMAP_DATA: 40,
  SIZE: 48,
} as const;
export const ImageType = { BITMAP: 0 } as const;
/** enum SpiceBitmapFmt. */
export const BitmapFormat = { BIT_16: 6, BIT_24: 7, BIT_32: 8, RGBA: 9 } as const;
export const BITMAP_TOP_DOWN = 1 << 2;

/** struct qxl_cursor_cmd. */
export const CursorCmd = { TYPE: 8, POSITION_X: 9, POSITION_Y: 11, VISIBLE: 13, SHAPE: 14, SIZE: 150 } as const;
export const CursorCmdType = { SET: 0, MOVE: 1, HIDE: 2, TRAIL: 3 } as const;
/** struct qxl_cursor: header, data_size, then a data chunk. */
export const Cursor = { UNIQUE: 0, TYPE: 8, WIDTH: 10, HEIGHT: 12, HOT_X: 14, HOT_Y: 16, DATA_SIZE: 18, CHUNK: 22, SIZE: 42 } as const;
export const CursorType = { ALPHA: 0 } as const;

/** struct qxl_surface_cmd. */
export const SurfaceCmd = { SURFACE_ID: 8, TYPE: 12, FLAGS: 13, FORMAT: 17, WIDTH: 21, HEIGHT: 25, STRIDE: 29, DATA: 33, SIZE: 41 } as const;
export const SurfaceCmdType = { CREATE: 0, DESTROY: 1 } as const;

/** struct qxl_monitors_config: count, max_allowed, then heads of 7 u32 (id, surface_id, width, height, x, y, flags). */
export const MonitorsConfig = { COUNT: 0, MAX_ALLOWED: 2, HEADS: 4, HEAD_SIZE: 28 } as const;

/** A rectangle as qxl_rect holds it. */
export interface Rect {
  readonly top: number;
  readonly left: number;
  readonly bottom: number;
  readonly right: number;
}

export function readRect(v: DataView, at: number): Rect {
  return { top: v.getInt32(at, true), left: v.getInt32(at + 4, true), bottom: v.getInt32(at + 8, true), right: v.getInt32(at + 12, true) };
}

export function writeRect(v: DataView, at: number, r: Rect): void {
  v.setInt32(at, r.top, true);
  v.setInt32(at + 4, r.left, true);
  v.setInt32(at + 8, r.bottom, true);
  v.setInt32(at + 12, r.right, true);
}
