/**
 * The virtio-scsi wire format (VIRTIO 1.2 §5.6): feature bits, the configuration space, the
 * 8-byte LUN address, the command request and response headers, control-queue requests (task
 * management and asynchronous notification) and event records. Device and driver both encode and
 * decode through this module so the two halves cannot disagree on a byte.
 */
import { ConfigLayout, type ValuesOf } from '../../virtio/config-layout.ts';

/** §5.6.3 feature bits (bit numbers). */
export const ScsiFeature = {
  /** Requests may carry both data-out and data-in buffers (bidirectional commands). */
  INOUT: 0,
  /** The device reports hot-plug and hot-unplug of LUNs on the event queue. */
  HOTPLUG: 1,
  /** The device reports parameter changes (capacity, ...) on the event queue. */
  CHANGE: 2,
  T10_PI: 3,
} as const;

/** Default cdb_size and sense_size (§5.6.4); a driver may write other values before DRIVER_OK. */
export const DEFAULT_CDB_SIZE = 32;
export const DEFAULT_SENSE_SIZE = 96;

/** `struct virtio_scsi_config` (§5.6.4). sense_size and cdb_size are the driver-writable fields. */
export const SCSI_CONFIG = new ConfigLayout('virtio-scsi', {
  numQueues: { offset: 0, width: 4, about: 'request queues' },
  segMax: { offset: 4, width: 4, about: 'data segments per command' },
  maxSectors: { offset: 8, width: 4, about: '512-byte sectors per command' },
  cmdPerLun: { offset: 12, width: 4 },
  eventInfoSize: { offset: 16, width: 4, about: 'bytes of an event record' },
  senseSize: { offset: 20, width: 4, about: 'driver-writable' },
  cdbSize: { offset: 24, width: 4, about: 'driver-writable' },
  maxChannel: { offset: 28, width: 2 },
  maxTarget: { offset: 30, width: 2 },
  maxLun: { offset: 32, width: 4 },
});

export type ScsiConfig = ValuesOf<typeof SCSI_CONFIG>;

/** §5.6.6.1 response codes of a command, and of control requests. */
export const Response = {
  OK: 0,
  OVERRUN: 1,
  ABORTED: 2,
  BAD_TARGET: 3,
  RESET: 4,
  BUSY: 5,
  TRANSPORT_FAILURE: 6,
  TARGET_FAILURE: 7,
  NEXUS_FAILURE: 8,
  FAILURE: 9,
  FUNCTION_SUCCEEDED: 10,
  FUNCTION_REJECTED: 11,
  INCORRECT_LUN: 12,
} as const;

/** §5.6.6.1 task attributes. */
export const TaskAttr = { SIMPLE: 0, ORDERED: 1, HEAD: 2, ACA: 3 } as const;

// --- LUN addresses (§5.6.6.1) ---

/**
 * A logical unit's address: target (bus id) and LUN. §5.6.6.1: lun[0] is 1, lun[1] the target,
 * lun[2..3] a single-level LUN structure (SAM-5 §4.7.4: the top two bits are the address
 * method, 00b peripheral for LUNs below 256, 01b flat space up to 16383), lun[4..7] zero.
 */
export interface LunAddress {
  readonly target: number;
  readonly lun: number;
}

export const LUN_FIELD_SIZE = 8;
/** Largest LUN the single-level flat-space format carries. */
export const MAX_LUN = 0x3fff;
/** Largest target lun[1] carries. */
export const MAX_TARGET = 0xff;

/**
 * Decode an 8-byte LUN field, or undefined when it is not a §5.6.6.1 address (wrong first byte,
 * an address method other than peripheral or flat, a second level): the device answers such
 * requests BAD_TARGET.
 */
export function decodeLun(bytes: Uint8Array, at = 0): LunAddress | undefined {
  if (bytes[at] !== 1) return undefined;
  const method = bytes[at + 2] >> 6;
  // Peripheral addressing (00b) with a non-zero bus field names another bus: not ours.
  if (method > 1 || (method === 0 && bytes[at + 2] !== 0)) return undefined;
  for (let i = 4; i < LUN_FIELD_SIZE; i++) if (bytes[at + i] !== 0) return undefined;
  return { target: bytes[at + 1], lun: ((bytes[at + 2] & 0x3f) << 8) | bytes[at + 3] };
}

/** Encode a request's address as Linux does: flat space (01b) for every LUN. */
export function encodeLun(address: LunAddress, out: Uint8Array = new Uint8Array(LUN_FIELD_SIZE), at = 0): Uint8Array {
  out.fill(0, at, at + LUN_FIELD_SIZE);
  out[at] = 1;
  out[at + 1] = address.target;
  out[at + 2] = 0x40 | (address.lun >> 8);
  out[at + 3] = address.lun & 0xff;
  return out;
}

/**
 * Encode an event's address in the form REPORT LUNS uses: peripheral (lun[2] = 0) below 256,
 * flat space above. Linux reads an event's LUN as (lun[2] << 8) | lun[3] without masking the
 * address method (drivers/scsi/virtio_scsi.c), so a flat-space LUN 5 would be LUN 16389 to it;
 * QEMU's virtio-scsi encodes events this way for the same reason.
 */
export function encodeEventLun(address: LunAddress, out: Uint8Array, at: number): void {
  out.fill(0, at, at + LUN_FIELD_SIZE);
  out[at] = 1;
  out[at + 1] = address.target;
  if (address.lun >= 256) out[at + 2] = 0x40 | (address.lun >> 8);
  out[at + 3] = address.lun & 0xff;
}

/**
 * A LUN as REPORT LUNS lists it (SAM-5 §4.7): the 8-byte single-level structure, peripheral
 * method below 256 and flat space above, with the same LUN numbering as the virtio address.
 */
export function reportedLun(lun: number, out: Uint8Array, at: number): void {
  out.fill(0, at, at + LUN_FIELD_SIZE);
  if (lun < 256) out[at + 1] = lun;
  else {
    out[at] = 0x40 | (lun >> 8);
    out[at + 1] = lun & 0xff;
  }
}

// --- command requests (§5.6.6.1) ---

/** lun[8], id (le64), task_attr, prio, crn: what precedes the CDB. */
export const COMMAND_HEADER_SIZE = 19;
/** sense_len, residual, status_qualifier, status, response: what precedes the sense bytes. */
export const RESPONSE_HEADER_SIZE = 12;

export interface CommandHeader {
  /** The raw LUN field; decodeLun() reads it. */
  readonly lun: Uint8Array;
  /** The command's tag, which ABORT TASK names. */
  readonly id: bigint;
  readonly taskAttr: number;
  readonly prio: number;
  readonly crn: number;
  readonly cdb: Uint8Array;
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Decode a request header of COMMAND_HEADER_SIZE + cdbSize bytes (the caller checked the length). */
export function decodeCommandHeader(bytes: Uint8Array, cdbSize: number): CommandHeader {
  const v = viewOf(bytes);
  return {
    lun: bytes.slice(0, LUN_FIELD_SIZE),
    id: v.getBigUint64(8, true),
    taskAttr: bytes[16],
    prio: bytes[17],
    crn: bytes[18],
    cdb: bytes.slice(COMMAND_HEADER_SIZE, COMMAND_HEADER_SIZE + cdbSize),
  };
}

export function encodeCommandHeader(h: CommandHeader, cdbSize: number): Uint8Array {
  const out = new Uint8Array(COMMAND_HEADER_SIZE + cdbSize);
  out.set(h.lun.subarray(0, LUN_FIELD_SIZE));
  viewOf(out).setBigUint64(8, h.id, true);
  out[16] = h.taskAttr;
  out[17] = h.prio;
  out[18] = h.crn;
  out.set(h.cdb.subarray(0, cdbSize), COMMAND_HEADER_SIZE);
  return out;
}

export interface CommandResponse {
  /** Sense bytes the device produced (sense_len may exceed what fits in sense[]). */
  readonly senseLen: number;
  /** Bytes of the data buffer not transferred (§5.6.6.1 residual). */
  readonly residual: number;
  readonly statusQualifier: number;
  /** SCSI status byte (SAM-5 §5.3): GOOD, CHECK CONDITION, ... */
  readonly status: number;
  /** Response code (Response). */
  readonly response: number;
  readonly sense: Uint8Array;
}

/** Encode a response into `out` (RESPONSE_HEADER_SIZE + sense_size bytes); sense beyond it is cut. */
export function encodeCommandResponse(r: CommandResponse, out: Uint8Array): void {
  out.fill(0);
  const v = viewOf(out);
  v.setUint32(0, r.senseLen, true);
  v.setUint32(4, r.residual, true);
  v.setUint16(8, r.statusQualifier, true);
  out[10] = r.status;
  out[11] = r.response;
  out.set(r.sense.subarray(0, Math.max(0, out.length - RESPONSE_HEADER_SIZE)), RESPONSE_HEADER_SIZE);
}

export function decodeCommandResponse(bytes: Uint8Array): CommandResponse {
  const v = viewOf(bytes);
  const senseLen = v.getUint32(0, true);
  return {
    senseLen,
    residual: v.getUint32(4, true),
    statusQualifier: v.getUint16(8, true),
    status: bytes[10],
    response: bytes[11],
    sense: bytes.slice(RESPONSE_HEADER_SIZE, RESPONSE_HEADER_SIZE + Math.min(senseLen, bytes.length - RESPONSE_HEADER_SIZE)),
  };
}

// --- control queue (§5.6.6.2) ---

export const ControlType = { TMF: 0, AN_QUERY: 1, AN_SUBSCRIBE: 2 } as const;

/** Task management function subtypes (§5.6.6.2). */
export const TmfSubtype = {
  ABORT_TASK: 0,
  ABORT_TASK_SET: 1,
  CLEAR_ACA: 2,
  CLEAR_TASK_SET: 3,
  I_T_NEXUS_RESET: 4,
  LOGICAL_UNIT_RESET: 5,
  QUERY_TASK: 6,
  QUERY_TASK_SET: 7,
} as const;

/** `struct virtio_scsi_ctrl_tmf`'s device-readable part: type, subtype, lun, id. */
export const TMF_REQUEST_SIZE = 24;
/** `struct virtio_scsi_ctrl_an`'s device-readable part: type, lun, event_requested. */
export const AN_REQUEST_SIZE = 16;
/** Its device-writable part: event_actual, response. */
export const AN_RESPONSE_SIZE = 5;

export interface TmfRequest {
  readonly subtype: number;
  readonly lun: Uint8Array;
  readonly id: bigint;
}

/** The control request's type: the first le32 of every control request. */
export function controlType(bytes: Uint8Array): number {
  return viewOf(bytes).getUint32(0, true);
}

export function decodeTmf(bytes: Uint8Array): TmfRequest {
  const v = viewOf(bytes);
  return { subtype: v.getUint32(4, true), lun: bytes.slice(8, 16), id: v.getBigUint64(16, true) };
}

export function encodeTmf(t: TmfRequest): Uint8Array {
  const out = new Uint8Array(TMF_REQUEST_SIZE);
  const v = viewOf(out);
  v.setUint32(0, ControlType.TMF, true);
  v.setUint32(4, t.subtype, true);
  out.set(t.lun.subarray(0, LUN_FIELD_SIZE), 8);
  v.setBigUint64(16, t.id, true);
  return out;
}

export interface AnRequest {
  readonly type: number;
  readonly lun: Uint8Array;
  readonly eventRequested: number;
}

export function decodeAn(bytes: Uint8Array): AnRequest {
  return { type: controlType(bytes), lun: bytes.slice(4, 12), eventRequested: viewOf(bytes).getUint32(12, true) };
}

export function encodeAn(a: AnRequest): Uint8Array {
  const out = new Uint8Array(AN_REQUEST_SIZE);
  const v = viewOf(out);
  v.setUint32(0, a.type, true);
  out.set(a.lun.subarray(0, LUN_FIELD_SIZE), 4);
  v.setUint32(12, a.eventRequested, true);
  return out;
}

export function encodeAnResponse(eventActual: number, response: number): Uint8Array {
  const out = new Uint8Array(AN_RESPONSE_SIZE);
  viewOf(out).setUint32(0, eventActual, true);
  out[4] = response;
  return out;
}

// --- event queue (§5.6.6.3) ---

export const EventType = {
  NO_EVENT: 0,
  TRANSPORT_RESET: 1,
  ASYNC_NOTIFY: 2,
  PARAM_CHANGE: 3,
} as const;

/** Set in `event` when the device had to drop events for want of buffers (§5.6.6.3.1). */
export const EVENTS_MISSED = 0x8000_0000;

/** TRANSPORT_RESET reasons (§5.6.6.3.1). */
export const ResetReason = { HARD: 0, RESCAN: 1, REMOVED: 2 } as const;

/** `struct virtio_scsi_event`: event, lun[8], reason. */
export const EVENT_SIZE = 16;

export interface ScsiEvent {
  readonly event: number;
  readonly address: LunAddress;
  readonly reason: number;
}

export function encodeEvent(e: ScsiEvent): Uint8Array {
  const out = new Uint8Array(EVENT_SIZE);
  const v = viewOf(out);
  v.setUint32(0, e.event >>> 0, true);
  encodeEventLun(e.address, out, 4);
  v.setUint32(12, e.reason, true);
  return out;
}

export interface DecodedEvent {
  readonly event: number;
  readonly lun: Uint8Array;
  readonly reason: number;
}

export function decodeEvent(bytes: Uint8Array): DecodedEvent {
  const v = viewOf(bytes);
  return { event: v.getUint32(0, true), lun: bytes.slice(4, 12), reason: v.getUint32(12, true) };
}
