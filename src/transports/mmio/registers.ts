/** The virtio-mmio version 2 register layout (§4.2.2). Offsets in bytes from the device's base. */
export const MmioReg = {
  MAGIC_VALUE: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  /** QueueSizeMax, formerly QueueNumMax. */
  QUEUE_SIZE_MAX: 0x034,
  /** QueueSize, formerly QueueNum. */
  QUEUE_SIZE: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  QUEUE_RESET: 0x0c0,
  CONFIG_GENERATION: 0x0fc,
  /** Device-specific configuration space starts here, accessed 8, 16 or 32 bits wide. */
  CONFIG: 0x100,
} as const;

/** "virt" in little-endian. */
export const MMIO_MAGIC = 0x74726976;
/** Version 2 is the non-legacy interface; 1 was legacy. */
export const MMIO_VERSION = 2;

/** InterruptStatus / InterruptACK bits. */
export const MmioInterrupt = {
  USED_BUFFER: 1,
  CONFIG_CHANGE: 2,
} as const;

/** An access width in bytes. */
export type AccessWidth = 1 | 2 | 4;

/** What a driver can do to a virtio-mmio device: sized reads and writes at register offsets. */
export interface MmioRegisterAccess {
  read(offset: number, width: AccessWidth): number;
  write(offset: number, width: AccessWidth, value: number): void;
}
