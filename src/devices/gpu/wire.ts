/**
 * The GPU device's wire format (§5.7), shared by the device and the driver: feature bits, the
 * configuration space, the control header, the 2D command and response codes and structures, and
 * the pixel formats of 2D resources. Every structure is little-endian; the sizes here are the
 * C structures' sizes in §5.7.6.
 */
import { ConfigLayout, type ValuesOf } from '../../virtio/config-layout.ts';

/** §5.7.3 feature bits. */
export const GpuFeature = {
  /** 3D mode (virgl): not offered. */
  VIRGL: 0,
  /** GET_EDID is supported (§5.7.6.8). */
  EDID: 1,
  RESOURCE_UUID: 2,
  RESOURCE_BLOB: 3,
  CONTEXT_INIT: 4,
} as const;

export const GPU_FEATURE_NAMES: Readonly<Record<number, string>> = {
  [GpuFeature.VIRGL]: 'VIRGL',
  [GpuFeature.EDID]: 'EDID',
  [GpuFeature.RESOURCE_UUID]: 'RESOURCE_UUID',
  [GpuFeature.RESOURCE_BLOB]: 'RESOURCE_BLOB',
  [GpuFeature.CONTEXT_INIT]: 'CONTEXT_INIT',
};

/** §5.7.4: the only event, "the display configuration has changed". */
export const EVENT_DISPLAY = 1;

/** §5.7.4: scanouts a device may have (VIRTIO_GPU_MAX_SCANOUTS). */
export const MAX_SCANOUTS = 16;

/** `struct virtio_gpu_config` (§5.7.4). */
export const GPU_CONFIG = new ConfigLayout('virtio-gpu', {
  /** Pending events (EVENT_DISPLAY), set by the device; the driver may not write it. */
  eventsRead: { offset: 0, width: 4, about: 'pending events' },
  /** Written by the driver: the events it handled, cleared from events_read. */
  eventsClear: { offset: 4, width: 4, about: 'events to clear' },
  numScanouts: { offset: 8, width: 4, about: 'scanouts (1..16)' },
  numCapsets: { offset: 12, width: 4, about: '3D capability sets' },
});

export type GpuConfig = ValuesOf<typeof GPU_CONFIG>;

/** §5.7.6.7 command and response types (enum virtio_gpu_ctrl_type). */
export const GpuCmd = {
  GET_DISPLAY_INFO: 0x0100,
  RESOURCE_CREATE_2D: 0x0101,
  RESOURCE_UNREF: 0x0102,
  SET_SCANOUT: 0x0103,
  RESOURCE_FLUSH: 0x0104,
  TRANSFER_TO_HOST_2D: 0x0105,
  RESOURCE_ATTACH_BACKING: 0x0106,
  RESOURCE_DETACH_BACKING: 0x0107,
  GET_CAPSET_INFO: 0x0108,
  GET_CAPSET: 0x0109,
  GET_EDID: 0x010a,
  UPDATE_CURSOR: 0x0300,
  MOVE_CURSOR: 0x0301,
} as const;

export const GpuResp = {
  OK_NODATA: 0x1100,
  OK_DISPLAY_INFO: 0x1101,
  OK_CAPSET_INFO: 0x1102,
  OK_CAPSET: 0x1103,
  OK_EDID: 0x1104,
  ERR_UNSPEC: 0x1200,
  ERR_OUT_OF_MEMORY: 0x1201,
  ERR_INVALID_SCANOUT_ID: 0x1202,
  ERR_INVALID_RESOURCE_ID: 0x1203,
  ERR_INVALID_CONTEXT_ID: 0x1204,
  ERR_INVALID_PARAMETER: 0x1205,
} as const;

/** Names of commands and responses, for logs and test messages. */
export const GPU_TYPE_NAMES: Readonly<Record<number, string>> = Object.fromEntries([
  ...Object.entries(GpuCmd).map(([k, v]) => [v, k]),
  ...Object.entries(GpuResp).map(([k, v]) => [v, k]),
]);

/** ctrl_hdr flags (§5.7.6.7). */
export const GpuFlag = {
  /** The driver wants the fence completed: the response carries the same fence_id. */
  FENCE: 1,
  /** ring_idx is valid (CONTEXT_INIT). */
  INFO_RING_IDX: 2,
} as const;

/** `struct virtio_gpu_ctrl_hdr`: type, flags, fence_id, ctx_id, ring_idx, padding[3]. */
export const CTRL_HDR_SIZE = 24;

export interface CtrlHdr {
  readonly type: number;
  readonly flags: number;
  readonly fenceId: bigint;
  readonly ctxId: number;
  readonly ringIdx: number;
}

export function encodeHdr(view: DataView, at: number, h: CtrlHdr): void {
  view.setUint32(at, h.type, true);
  view.setUint32(at + 4, h.flags, true);
  view.setBigUint64(at + 8, h.fenceId, true);
  view.setUint32(at + 16, h.ctxId, true);
  view.setUint8(at + 20, h.ringIdx);
}

export function decodeHdr(view: DataView, at = 0): CtrlHdr {
  return {
    type: view.getUint32(at, true),
    flags: view.getUint32(at + 4, true),
    fenceId: view.getBigUint64(at + 8, true),
    ctxId: view.getUint32(at + 16, true),
    ringIdx: view.getUint8(at + 20),
  };
}

/** `struct virtio_gpu_rect`. */
export interface GpuRect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

export const RECT_SIZE = 16;

export function encodeRect(view: DataView, at: number, r: GpuRect): void {
  view.setUint32(at, r.x, true);
  view.setUint32(at + 4, r.y, true);
  view.setUint32(at + 8, r.width, true);
  view.setUint32(at + 12, r.height, true);
}

export function decodeRect(view: DataView, at: number): GpuRect {
  return { x: view.getUint32(at, true), y: view.getUint32(at + 4, true), width: view.getUint32(at + 8, true), height: view.getUint32(at + 12, true) };
}

/**
 * Size of each command's request (header included), which a request must reach; for
 * RESOURCE_ATTACH_BACKING the fixed part before its nr_entries mem_entry records.
 */
export const REQUEST_SIZE: Readonly<Record<number, number>> = {
  [GpuCmd.GET_DISPLAY_INFO]: CTRL_HDR_SIZE,
  /** resource_id, format, width, height. */
  [GpuCmd.RESOURCE_CREATE_2D]: CTRL_HDR_SIZE + 16,
  /** resource_id, padding. */
  [GpuCmd.RESOURCE_UNREF]: CTRL_HDR_SIZE + 8,
  /** rect, scanout_id, resource_id. */
  [GpuCmd.SET_SCANOUT]: CTRL_HDR_SIZE + RECT_SIZE + 8,
  /** rect, resource_id, padding. */
  [GpuCmd.RESOURCE_FLUSH]: CTRL_HDR_SIZE + RECT_SIZE + 8,
  /** rect, le64 offset, resource_id, padding. */
  [GpuCmd.TRANSFER_TO_HOST_2D]: CTRL_HDR_SIZE + RECT_SIZE + 16,
  /** resource_id, nr_entries; then nr_entries × mem_entry. */
  [GpuCmd.RESOURCE_ATTACH_BACKING]: CTRL_HDR_SIZE + 8,
  /** resource_id, padding. */
  [GpuCmd.RESOURCE_DETACH_BACKING]: CTRL_HDR_SIZE + 8,
  /** scanout, padding. */
  [GpuCmd.GET_EDID]: CTRL_HDR_SIZE + 8,
  /** cursor_pos (scanout_id, x, y, padding), resource_id, hot_x, hot_y, padding. */
  [GpuCmd.UPDATE_CURSOR]: CTRL_HDR_SIZE + 32,
  [GpuCmd.MOVE_CURSOR]: CTRL_HDR_SIZE + 32,
};

/** `struct virtio_gpu_mem_entry`: le64 addr, le32 length, le32 padding. */
export const MEM_ENTRY_SIZE = 16;

/** `struct virtio_gpu_display_one`: rect, enabled, flags. */
export const DISPLAY_ONE_SIZE = RECT_SIZE + 8;
/** `struct virtio_gpu_resp_display_info`: header and MAX_SCANOUTS display_one. */
export const DISPLAY_INFO_SIZE = CTRL_HDR_SIZE + MAX_SCANOUTS * DISPLAY_ONE_SIZE;
/** `struct virtio_gpu_resp_edid`: header, size, padding, edid[1024]. */
export const EDID_RESPONSE_SIZE = CTRL_HDR_SIZE + 8 + 1024;

/** One scanout's mode as GET_DISPLAY_INFO reports it. */
export interface DisplayOne {
  readonly rect: GpuRect;
  readonly enabled: boolean;
}

export function decodeDisplayInfo(view: DataView): DisplayOne[] {
  const out: DisplayOne[] = [];
  for (let i = 0; i < MAX_SCANOUTS; i++) {
    const at = CTRL_HDR_SIZE + i * DISPLAY_ONE_SIZE;
    out.push({ rect: decodeRect(view, at), enabled: view.getUint32(at + RECT_SIZE, true) !== 0 });
  }
  return out;
}

/**
 * §5.7.6.8 enum virtio_gpu_formats: the byte order of a pixel in memory. Linux's DRM_FORMAT_XRGB8888
 * (a little-endian 32-bit word 0xXXRRGGBB) is B8G8R8X8 here.
 */
export const GpuFormat = {
  B8G8R8A8_UNORM: 1,
  B8G8R8X8_UNORM: 2,
  A8R8G8B8_UNORM: 3,
  X8R8G8B8_UNORM: 4,
  R8G8B8A8_UNORM: 67,
  X8B8G8R8_UNORM: 68,
  A8B8G8R8_UNORM: 121,
  R8G8B8X8_UNORM: 134,
} as const;

/** Where red, green, blue and alpha (-1: none, the pixel is opaque) sit in a 4-byte pixel. */
export interface PixelLayout {
  readonly r: number;
  readonly g: number;
  readonly b: number;
  readonly a: number;
}

export const PIXEL_LAYOUTS: Readonly<Record<number, PixelLayout>> = {
  [GpuFormat.B8G8R8A8_UNORM]: { b: 0, g: 1, r: 2, a: 3 },
  [GpuFormat.B8G8R8X8_UNORM]: { b: 0, g: 1, r: 2, a: -1 },
  [GpuFormat.A8R8G8B8_UNORM]: { a: 0, r: 1, g: 2, b: 3 },
  [GpuFormat.X8R8G8B8_UNORM]: { r: 1, g: 2, b: 3, a: -1 },
  [GpuFormat.R8G8B8A8_UNORM]: { r: 0, g: 1, b: 2, a: 3 },
  [GpuFormat.X8B8G8R8_UNORM]: { b: 1, g: 2, r: 3, a: -1 },
  [GpuFormat.A8B8G8R8_UNORM]: { a: 0, b: 1, g: 2, r: 3 },
  [GpuFormat.R8G8B8X8_UNORM]: { r: 0, g: 1, b: 2, a: -1 },
};

/** Every 2D format is 4 bytes a pixel. */
export const BYTES_PER_PIXEL = 4;

/** §5.7.6.10: the cursor image is a 64x64 resource. */
export const CURSOR_SIZE = 64;
