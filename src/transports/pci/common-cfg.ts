/** struct virtio_pci_common_cfg (§4.1.4.3): offsets in bytes from the structure's start. */
export const CommonCfg = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  MSIX_CONFIG: 0x10,
  NUM_QUEUES: 0x12,
  DEVICE_STATUS: 0x14,
  CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_MSIX_VECTOR: 0x1a,
  QUEUE_ENABLE: 0x1c,
  QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC: 0x20,
  QUEUE_DRIVER: 0x28,
  QUEUE_DEVICE: 0x30,
} as const;

/** Bytes up to the end of queue_device: everything a driver without NOTIFICATION_DATA or RING_RESET uses. */
export const COMMON_CFG_SIZE = 0x38;

/** §4.1.4.5 ISR status bits. */
export const IsrStatus = {
  QUEUE: 0x1,
  CONFIG: 0x2,
} as const;
