/**
 * Constants of the VIRTIO 1.2 specification that every layer shares.
 * Section numbers refer to "Virtual I/O Device (VIRTIO) Version 1.2".
 */

/** §2.1 Device Status Field. */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** §5 Device Types: the virtio device ID of each device this project implements. */
export const DeviceId = {
  NET: 1,
  BLOCK: 2,
  CONSOLE: 3,
  RNG: 4,
  BALLOON: 5,
  SCSI: 8,
  GPU: 16,
  RTC: 17,
  INPUT: 18,
  VSOCK: 19,
} as const;

/** §6 Reserved Feature Bits (bit numbers, not masks). */
export const Feature = {
  INDIRECT_DESC: 28,
  EVENT_IDX: 29,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  SR_IOV: 37,
  NOTIFICATION_DATA: 38,
  NOTIF_CONFIG_DATA: 39,
  RING_RESET: 40,
} as const;

/** Mask of a feature bit number, as the 64-bit feature words are bigint. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

export function hasFeature(features: bigint, bit: number): boolean {
  return (features & featureBit(bit)) !== 0n;
}

/** §2.7.5 / §2.8.2 descriptor flags (shared by both ring layouts). */
export const DescFlag = {
  NEXT: 1,
  WRITE: 2,
  INDIRECT: 4,
  /** §2.8.1 packed only */
  AVAIL: 1 << 7,
  /** §2.8.1 packed only */
  USED: 1 << 15,
} as const;

/** §2.7.3 maximum queue size for split rings; packed rings likewise cap at 2^15. */
export const MAX_QUEUE_SIZE = 32768;

/**
 * The largest ring front-ends use (QEMU's VIRTQUEUE_MAX_SIZE; libblkio asks for 256): the
 * default largest queue size of every device, so whatever ring size a front-end picks is
 * accepted.
 */
export const FRONT_END_MAX_QUEUE_SIZE = 1024;

/** Size in bytes of one descriptor, split (§2.7.5) and packed (§2.8.13) alike. */
export const DESC_SIZE = 16;
