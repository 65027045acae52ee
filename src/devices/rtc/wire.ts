/**
 * The virtio-rtc wire format (VIRTIO 1.4, "RTC Device"): feature bit, clock types, smearing
 * variants, hardware counters, status codes, and every message with its exact request and
 * response size. Device and driver both encode and decode through this module so the two halves
 * cannot disagree on a byte. Linux's driver refuses an OK response whose used length is not the
 * full response size, so the sizes here are the ones the structures in the spec add up to.
 *
 * All multi-byte fields are little-endian; clock readings and alarm times are le64 nanoseconds,
 * bigint here.
 */

/** "Feature bits". */
export const RtcFeature = {
  ALARM: 0,
} as const;

/** "Clock Types". */
export const ClockType = {
  UTC: 0,
  TAI: 1,
  MONOTONIC: 2,
  UTC_SMEARED: 3,
  UTC_MAYBE_SMEARED: 4,
} as const;

/** "Smearing Variants". */
export const Smear = {
  UNSPECIFIED: 0,
  NOON_LINEAR: 1,
  UTC_SLS: 2,
} as const;

/** "Hardware Counters". */
export const HwCounter = {
  ARM_VCT: 0,
  X86_TSC: 1,
  INVALID: 0xff,
} as const;

/** `struct virtio_rtc_resp_head.status`. */
export const RtcStatus = {
  OK: 0,
  EOPNOTSUPP: 2,
  ENODEV: 3,
  EINVAL: 4,
  EIO: 5,
} as const;

/** `msg_type` of requests (requestq) and notifications (alarmq). */
export const MsgType = {
  READ: 0x0001,
  READ_CROSS: 0x0002,
  CFG: 0x1000,
  CLOCK_CAP: 0x1001,
  CROSS_CAP: 0x1002,
  READ_ALARM: 0x1003,
  SET_ALARM: 0x1004,
  SET_ALARM_ENABLED: 0x1005,
  NOTIF_ALARM: 0x2000,
} as const;

/** VIRTIO_RTC_FLAG_ALARM_CAP in `virtio_rtc_resp_clock_cap.flags`. */
export const FLAG_ALARM_CAP = 1;
/** VIRTIO_RTC_FLAG_CROSS_CAP in `virtio_rtc_resp_cross_cap.flags`. */
export const FLAG_CROSS_CAP = 1;
/** VIRTIO_RTC_FLAG_ALARM_ENABLED in the alarm messages' `flags`. */
export const FLAG_ALARM_ENABLED = 1;

/** `struct virtio_rtc_req_head`, `virtio_rtc_resp_head` and `virtio_rtc_notif_head`: 8 bytes each. */
export const HEAD_SIZE = 8;
/** `struct virtio_rtc_notif_alarm`. */
export const NOTIF_ALARM_SIZE = 16;

/** Request and response size of each request type, head included. */
export const MESSAGE_SIZES: ReadonlyMap<number, { readonly request: number; readonly response: number }> = new Map([
  [MsgType.READ, { request: 16, response: 16 }],
  [MsgType.READ_CROSS, { request: 16, response: 24 }],
  [MsgType.CFG, { request: 8, response: 16 }],
  [MsgType.CLOCK_CAP, { request: 16, response: 16 }],
  [MsgType.CROSS_CAP, { request: 16, response: 16 }],
  [MsgType.READ_ALARM, { request: 16, response: 24 }],
  [MsgType.SET_ALARM, { request: 24, response: 8 }],
  [MsgType.SET_ALARM_ENABLED, { request: 16, response: 8 }],
]);

/** The longest request (SET_ALARM): all a device reads of one. */
export const MAX_REQUEST_SIZE = Math.max(...[...MESSAGE_SIZES.values()].map((m) => m.request));

/** The name of a message type, for logs and errors. */
export function msgTypeName(type: number): string {
  const entry = Object.entries(MsgType).find(([, v]) => v === type);
  return entry ? entry[0] : `0x${type.toString(16).padStart(4, '0')}`;
}

/** The largest value an le64 holds. */
export const U64_MAX = (1n << 64n) - 1n;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A decoded request: the fields of every request type, zero where a type has none. */
export interface RtcRequest {
  readonly msgType: number;
  readonly clockId: number;
  readonly hwCounter: number;
  readonly alarmTime: bigint;
  readonly flags: number;
}

/**
 * The fields of a request whose bytes (at least the request size of its type) are in `bytes`.
 * SET_ALARM puts alarm_time first and clock_id after it; every other request has clock_id
 * right after the head.
 */
export function decodeRequest(bytes: Uint8Array): RtcRequest {
  const v = view(bytes);
  const msgType = v.getUint16(0, true);
  const at = (offset: number, width: 1 | 2): number =>
    bytes.length < offset + width ? 0 : width === 1 ? v.getUint8(offset) : v.getUint16(offset, true);
  if (msgType === MsgType.SET_ALARM) {
    return { msgType, alarmTime: v.getBigUint64(8, true), clockId: at(16, 2), flags: at(18, 1), hwCounter: 0 };
  }
  // READ_CROSS and CROSS_CAP carry hw_counter, SET_ALARM_ENABLED flags, at the same offset.
  return { msgType, clockId: at(8, 2), hwCounter: at(10, 1), flags: at(10, 1), alarmTime: 0n };
}

/** A request as the driver sends it: exactly the request size of its type. */
export function encodeRequest(req: Partial<RtcRequest> & { readonly msgType: number }): Uint8Array {
  const size = MESSAGE_SIZES.get(req.msgType)?.request ?? HEAD_SIZE;
  const bytes = new Uint8Array(size);
  const v = view(bytes);
  v.setUint16(0, req.msgType, true);
  if (req.msgType === MsgType.SET_ALARM) {
    v.setBigUint64(8, req.alarmTime ?? 0n, true);
    v.setUint16(16, req.clockId ?? 0, true);
    v.setUint8(18, req.flags ?? 0);
  } else if (size > HEAD_SIZE) {
    v.setUint16(8, req.clockId ?? 0, true);
    v.setUint8(10, req.msgType === MsgType.SET_ALARM_ENABLED ? (req.flags ?? 0) : (req.hwCounter ?? 0));
  }
  return bytes;
}

/** A response: status and the parameters of its type, reserved bytes zero. */
export interface RtcResponse {
  readonly status: number;
  /** CFG: num_clocks. */
  readonly numClocks?: number;
  /** CLOCK_CAP: type, leap_second_smearing, flags. */
  readonly clockType?: number;
  readonly smearing?: number;
  /** CLOCK_CAP, CROSS_CAP, READ_ALARM: flags. */
  readonly flags?: number;
  /** READ, READ_CROSS: clock_reading. */
  readonly reading?: bigint;
  /** READ_ALARM: alarm_time. */
  readonly alarmTime?: bigint;
}

/** The `size`-byte response of type `msgType`. */
export function encodeResponse(msgType: number, size: number, resp: RtcResponse): Uint8Array {
  const bytes = new Uint8Array(size);
  const v = view(bytes);
  v.setUint8(0, resp.status);
  if (resp.status !== RtcStatus.OK || size <= HEAD_SIZE) return bytes;
  switch (msgType) {
    case MsgType.CFG:
      v.setUint16(8, resp.numClocks ?? 0, true);
      break;
    case MsgType.CLOCK_CAP:
      v.setUint8(8, resp.clockType ?? 0);
      v.setUint8(9, resp.smearing ?? 0);
      v.setUint8(10, resp.flags ?? 0);
      break;
    case MsgType.CROSS_CAP:
      v.setUint8(8, resp.flags ?? 0);
      break;
    case MsgType.READ:
    case MsgType.READ_CROSS:
      v.setBigUint64(8, resp.reading ?? 0n, true);
      break;
    case MsgType.READ_ALARM:
      v.setBigUint64(8, resp.alarmTime ?? 0n, true);
      v.setUint8(16, resp.flags ?? 0);
      break;
  }
  return bytes;
}

/** The fields of a response of type `msgType` the driver got back. */
export function decodeResponse(msgType: number, bytes: Uint8Array): RtcResponse {
  const v = view(bytes);
  const status = v.getUint8(0);
  switch (msgType) {
    case MsgType.CFG:
      return { status, numClocks: v.getUint16(8, true) };
    case MsgType.CLOCK_CAP:
      return { status, clockType: v.getUint8(8), smearing: v.getUint8(9), flags: v.getUint8(10) };
    case MsgType.CROSS_CAP:
      return { status, flags: v.getUint8(8) };
    case MsgType.READ:
    case MsgType.READ_CROSS:
      return { status, reading: v.getBigUint64(8, true) };
    case MsgType.READ_ALARM:
      return { status, alarmTime: v.getBigUint64(8, true), flags: v.getUint8(16) };
    default:
      return { status };
  }
}

/** `struct virtio_rtc_notif_alarm`. */
export function encodeAlarmNotification(clockId: number): Uint8Array {
  const bytes = new Uint8Array(NOTIF_ALARM_SIZE);
  const v = view(bytes);
  v.setUint16(0, MsgType.NOTIF_ALARM, true);
  v.setUint16(8, clockId, true);
  return bytes;
}

/** The clock of an alarm notification, or undefined for anything else (too short, another type). */
export function decodeAlarmNotification(bytes: Uint8Array): number | undefined {
  if (bytes.length < NOTIF_ALARM_SIZE) return undefined;
  const v = view(bytes);
  return v.getUint16(0, true) === MsgType.NOTIF_ALARM ? v.getUint16(8, true) : undefined;
}
