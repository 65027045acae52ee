/**
 * virtio-input's wire format (VIRTIO 1.2 §5.8): the configuration space the driver queries
 * with select/subsel (§5.8.4), and the 8-byte events both queues carry (§5.8.6), which are
 * Linux evdev's `struct input_event` without the timestamp. Type and code numbers are evdev's
 * (include/uapi/linux/input-event-codes.h), as §5.8.6 says.
 */
import { ConfigLayout, type ValuesOf } from '../../virtio/config-layout.ts';

/** §5.8.4: what `select` asks for; the device answers in `size` and the union `u`. */
export const ConfigSelect = {
  UNSET: 0x00,
  ID_NAME: 0x01,
  ID_SERIAL: 0x02,
  ID_DEVIDS: 0x03,
  PROP_BITS: 0x10,
  EV_BITS: 0x11,
  ABS_INFO: 0x12,
} as const;

/** Bytes of the union `u` (§5.8.4: string[128], bitmap[128], abs, ids). */
export const CONFIG_UNION_BYTES = 128;

/** §5.8.4 struct virtio_input_config: 136 bytes. */
export const INPUT_CONFIG = new ConfigLayout('virtio-input', {
  select: { offset: 0, width: 1, about: 'what the driver asks for (VIRTIO_INPUT_CFG_*)' },
  subsel: { offset: 1, width: 1, about: 'which one of it: an event type, an axis' },
  size: { offset: 2, width: 1, about: 'bytes of the answer in u; 0 when there is none' },
  u: { offset: 8, bytes: CONFIG_UNION_BYTES, about: 'the answer' },
});
export type InputConfig = ValuesOf<typeof INPUT_CONFIG>;

/** Event types (input-event-codes.h). */
export const EvType = {
  SYN: 0x00,
  KEY: 0x01,
  REL: 0x02,
  ABS: 0x03,
  MSC: 0x04,
  SW: 0x05,
  LED: 0x11,
  SND: 0x12,
  REP: 0x14,
} as const;

export const SYN_REPORT = 0;
export const Rel = { X: 0x00, Y: 0x01, WHEEL: 0x08 } as const;
export const Abs = { X: 0x00, Y: 0x01 } as const;
export const Btn = { LEFT: 0x110, RIGHT: 0x111, MIDDLE: 0x112, SIDE: 0x113, EXTRA: 0x114 } as const;
/** KEY_LEFTSHIFT, held to type capitals. */
export const KEY_SHIFT = 42;
export const Led = { NUML: 0x00, CAPSL: 0x01, SCROLLL: 0x02 } as const;
/** Highest code of each type a bitmap can hold: 128 bytes of bits (§5.8.4). */
export const MAX_CODE = CONFIG_UNION_BYTES * 8 - 1;
/** BUS_VIRTUAL (include/uapi/linux/input.h), the bus type of ID_DEVIDS. */
export const BUS_VIRTUAL = 0x06;

/** §5.8.6 struct virtio_input_event. */
export interface InputEvent {
  readonly type: number;
  readonly code: number;
  /** Signed: relative motion is negative as often as not. */
  readonly value: number;
}

export const EVENT_BYTES = 8;

export function encodeEvent(e: InputEvent): Uint8Array {
  const out = new Uint8Array(EVENT_BYTES);
  const v = new DataView(out.buffer);
  v.setUint16(0, e.type, true);
  v.setUint16(2, e.code, true);
  v.setInt32(4, e.value, true);
  return out;
}

/** The event in the first 8 bytes, or undefined when there are fewer. */
export function decodeEvent(bytes: Uint8Array): InputEvent | undefined {
  if (bytes.length < EVENT_BYTES) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, EVENT_BYTES);
  return { type: v.getUint16(0, true), code: v.getUint16(2, true), value: v.getInt32(4, true) };
}

/** §5.8.4 struct virtio_input_absinfo: five le32 (min and max signed). */
export interface AbsInfo {
  readonly min: number;
  readonly max: number;
  readonly fuzz: number;
  readonly flat: number;
  readonly res: number;
}

export const ABS_INFO_BYTES = 20;

export function encodeAbsInfo(a: AbsInfo): Uint8Array {
  const out = new Uint8Array(ABS_INFO_BYTES);
  const v = new DataView(out.buffer);
  [a.min, a.max, a.fuzz, a.flat, a.res].forEach((x, i) => v.setInt32(i * 4, x, true));
  return out;
}

export function decodeAbsInfo(bytes: Uint8Array): AbsInfo {
  const v = new DataView(bytes.buffer, bytes.byteOffset, Math.min(bytes.length, ABS_INFO_BYTES));
  const at = (i: number): number => (4 * i + 4 <= v.byteLength ? v.getInt32(4 * i, true) : 0);
  return { min: at(0), max: at(1), fuzz: at(2), flat: at(3), res: at(4) };
}

/** §5.8.4 struct virtio_input_devids: four le16. */
export interface DevIds {
  readonly bustype: number;
  readonly vendor: number;
  readonly product: number;
  readonly version: number;
}

export const DEVIDS_BYTES = 8;

export function encodeDevIds(d: DevIds): Uint8Array {
  const out = new Uint8Array(DEVIDS_BYTES);
  const v = new DataView(out.buffer);
  [d.bustype, d.vendor, d.product, d.version].forEach((x, i) => v.setUint16(i * 2, x, true));
  return out;
}

export function decodeDevIds(bytes: Uint8Array): DevIds {
  const v = new DataView(bytes.buffer, bytes.byteOffset, Math.min(bytes.length, DEVIDS_BYTES));
  const at = (i: number): number => (2 * i + 2 <= v.byteLength ? v.getUint16(2 * i, true) : 0);
  return { bustype: at(0), vendor: at(1), product: at(2), version: at(3) };
}

/** A bitmap with bit `c` set for each code (§5.8.4: "bitmap"), just long enough for the highest. */
export function encodeBitmap(codes: Iterable<number>): Uint8Array {
  const list = [...codes];
  if (list.length === 0) return new Uint8Array(0);
  const out = new Uint8Array((Math.max(...list) >> 3) + 1);
  for (const c of list) out[c >> 3] |= 1 << (c & 7);
  return out;
}

export function decodeBitmap(bytes: Uint8Array): number[] {
  const codes: number[] = [];
  for (let i = 0; i < bytes.length; i++) for (let b = 0; b < 8; b++) if (bytes[i] & (1 << b)) codes.push(i * 8 + b);
  return codes;
}
