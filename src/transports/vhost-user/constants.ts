/**
 * The numbers of the vhost-user protocol (QEMU docs/interop/vhost-user.rst): request types in
 * both directions, protocol feature bits, header flags and the limits the codec enforces.
 * Named once here so no other module spells a protocol number.
 */

/** Requests the front-end sends on the main socket ("Front-end message types"). */
export const FrontendRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;
export type FrontendRequest = (typeof FrontendRequest)[keyof typeof FrontendRequest];

/** Requests the back-end sends on the back-end channel ("Back-end message types"). */
export const BackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const;
export type BackendRequest = (typeof BackendRequest)[keyof typeof BackendRequest];

/** Bit numbers of GET/SET_PROTOCOL_FEATURES ("Protocol features"). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
} as const;
export type ProtocolFeature = (typeof ProtocolFeature)[keyof typeof ProtocolFeature];

/** Bit 30 of GET/SET_FEATURES: the back-end speaks GET/SET_PROTOCOL_FEATURES ("Communication"). */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** Bit 26 of GET/SET_FEATURES: dirty-page logging for live migration (VHOST_F_LOG_ALL). */
export const VHOST_F_LOG_ALL = 26;

/** The header's flags word ("Header"). */
export const HeaderFlag = {
  /** The low two bits hold the protocol version. */
  VERSION_MASK: 0x3,
  /** The only version: 1. */
  VERSION: 0x1,
  /** Set on every reply. */
  REPLY: 0x4,
  /** The sender wants a REPLY_ACK reply (see "VHOST_USER_PROTOCOL_F_REPLY_ACK"). */
  NEED_REPLY: 0x8,
} as const;

/** request u32, flags u32, size u32. */
export const HEADER_SIZE = 12;

/**
 * The largest payload the codec accepts. The biggest defined payload (a crypto session, below
 * 1 KiB in QEMU) fits; anything larger is refused before it is buffered.
 */
export const MAX_PAYLOAD_SIZE = 4096;

/** Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS), also its descriptor count. */
export const MAX_MEMORY_REGIONS = 8;

/** Descriptors one message may carry: a full memory table, or BACKEND_SEND_FD's limit. */
export const MAX_FDS = 8;

/** Largest configuration space access (VHOST_USER_MAX_CONFIG_SIZE). */
export const MAX_CONFIG_SIZE = 256;

/** In SET_VRING_KICK/CALL/ERR and vring areas: bits 0-7 are the ring index... */
export const VRING_INDEX_MASK = 0xffn;
/** ...and bit 8 says no descriptor accompanies the message. */
export const VRING_NOFD_MASK = 0x100n;

/** SET_VRING_ADDR flags bit: log used-ring writes (VHOST_VRING_F_LOG). */
export const VRING_F_LOG = 0;

/** Dirty-log granularity (VHOST_LOG_PAGE). */
export const LOG_PAGE_SIZE = 0x1000;

/** IOTLB message types. */
export const IotlbType = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4 } as const;
/** IOTLB permission flags. */
export const IotlbAccess = { NONE: 0, READ: 1, WRITE: 2, READ_WRITE: 3 } as const;

/** GET/SET_CONFIG flags. */
export const ConfigFlag = { WRITABLE: 0, LIVE_MIGRATION: 1 } as const;

/** SET_DEVICE_STATE_FD transfer direction and migration phase. */
export const DeviceStateDirection = { SAVE: 0, LOAD: 1 } as const;
export const DeviceStatePhase = { STOPPED: 0 } as const;

/** Memory region flags when XEN_MMAP is negotiated. */
export const XenMmapFlag = { FOREIGN: 0x1, GRANT: 0x2, MAP_ON_DEMAND: 0x100 } as const;

const FRONTEND_NAMES = new Map<number, string>(Object.entries(FrontendRequest).map(([k, v]) => [v, k]));
const BACKEND_NAMES = new Map<number, string>(Object.entries(BackendRequest).map(([k, v]) => [v, k]));

/** "VHOST_USER_GET_FEATURES" for 1, for log lines; unknown codes stay numbers. */
export function frontendRequestName(request: number): string {
  const name = FRONTEND_NAMES.get(request);
  return name === undefined ? `front-end request ${request}` : `VHOST_USER_${name}`;
}

export function backendRequestName(request: number): string {
  const name = BACKEND_NAMES.get(request);
  return name === undefined ? `back-end request ${request}` : `VHOST_USER_BACKEND_${name}`;
}
