/**
 * vfio-user wire format (QEMU docs/interop/vfio-user.rst): a 16-byte header on every message,
 * then a command-specific payload whose structures are the Linux VFIO ioctl structures. All
 * fields are little-endian. Checked against what QEMU 11.1's client (hw/vfio-user) sends.
 */

/** "Header": msg_id u16, command u16, message size u32 (header included), flags u32, error u32. */
export const HEADER_SIZE = 16;

export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
} as const;

/** Header flags: message type in the low nibble, then No_reply and Error. */
export const HeaderFlag = {
  TYPE_MASK: 0xf,
  COMMAND: 0x0,
  REPLY: 0x1,
  NO_REPLY: 0x10,
  ERROR: 0x20,
} as const;

/** Errno values the server answers with (Linux numbering, which the spec uses). */
export const Errno = {
  ENOENT: 2,
  EBADF: 9,
  EEXIST: 17,
  EINVAL: 22,
  ENOSPC: 28,
  ENOTSUP: 95,
} as const;

/** The protocol version this server speaks (the only one there is). */
export const VERSION_MAJOR = 0;
export const VERSION_MINOR = 0;

/** Most data one region access carries; advertised as max_data_xfer_size, so a client never sends more. */
export const MAX_DATA_TRANSFER = 64 * 1024;
/** Most bytes one message may have: a region write of the maximum (header, 16-byte access header, data). */
export const MAX_MESSAGE_SIZE = HEADER_SIZE + 16 + MAX_DATA_TRANSFER;
/** Descriptors a client may attach to one message (max_msg_fds). */
export const MAX_MESSAGE_FDS = 16;
/** DMA mappings the server records at most (max_dma_maps). */
export const MAX_DMA_MAPS = 1024;
/** The only DMA page size (pgsizes): 4 KiB. */
export const DMA_PAGE_SIZE = 4096;

/** struct vfio_device_info flags. */
export const DeviceInfoFlag = { RESET: 1 << 0, PCI: 1 << 1 } as const;

/** struct vfio_region_info flags and the sparse mmap capability (vfio.h). */
export const RegionFlag = { READ: 1 << 0, WRITE: 1 << 1, MMAP: 1 << 2, CAPS: 1 << 3 } as const;

/** VFIO PCI region indexes: BAR0..5, expansion ROM, configuration space, VGA. */
export const PciRegion = { BAR0: 0, BAR5: 5, ROM: 6, CONFIG: 7, VGA: 8, COUNT: 9 } as const;

/** VFIO PCI interrupt indexes. */
export const PciIrq = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4, COUNT: 5 } as const;

/** struct vfio_irq_info flags. */
export const IrqInfoFlag = { EVENTFD: 1 << 0, MASKABLE: 1 << 1, AUTOMASKED: 1 << 2, NORESIZE: 1 << 3 } as const;

/** struct vfio_irq_set flags: one data type and one action. */
export const IrqSetFlag = {
  DATA_NONE: 1 << 0,
  DATA_BOOL: 1 << 1,
  DATA_EVENTFD: 1 << 2,
  DATA_MASK: 0x7,
  ACTION_MASK: 1 << 3,
  ACTION_UNMASK: 1 << 4,
  ACTION_TRIGGER: 1 << 5,
  ACTION_MASK_ALL: 0x38,
} as const;

/** struct vfio_iommu_type1_dma_map / _unmap flags. */
export const DmaFlag = { READ: 1 << 0, WRITE: 1 << 1 } as const;
export const DmaUnmapFlag = { GET_DIRTY_BITMAP: 1 << 0, ALL: 1 << 1 } as const;

/** Payload sizes of the fixed structures (argsz of each). */
export const PayloadSize = {
  VERSION: 4,
  DMA_MAP: 32,
  DMA_UNMAP: 24,
  DEVICE_INFO: 16,
  REGION_INFO: 32,
  IRQ_INFO: 16,
  IRQ_SET: 20,
  REGION_ACCESS: 16,
} as const;

export interface Header {
  readonly id: number;
  readonly command: number;
  readonly size: number;
  readonly flags: number;
  readonly error: number;
}

export function decodeHeader(bytes: Uint8Array): Header {
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  return { id: v.getUint16(0, true), command: v.getUint16(2, true), size: v.getUint32(4, true), flags: v.getUint32(8, true), error: v.getUint32(12, true) };
}

/** A reply to `request` with `payload`, or an error reply carrying `errno` and no payload. */
export function encodeReply(request: Header, payload: Uint8Array, errno = 0): Uint8Array {
  const body = errno === 0 ? payload : new Uint8Array(0);
  const out = new Uint8Array(HEADER_SIZE + body.length);
  const v = new DataView(out.buffer);
  v.setUint16(0, request.id, true);
  v.setUint16(2, request.command, true);
  v.setUint32(4, out.length, true);
  v.setUint32(8, HeaderFlag.REPLY | (errno === 0 ? 0 : HeaderFlag.ERROR), true);
  v.setUint32(12, errno, true);
  out.set(body, HEADER_SIZE);
  return out;
}

/** A message with a payload the server refuses: answered with `errno`, logged once as `reason`. */
export class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
    this.name = 'RequestError';
  }
}
