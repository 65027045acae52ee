/**
 * What an input device says about itself through the select/subsel protocol (§5.8.4): its name,
 * serial, ids, properties, the event codes it sends per type and its absolute axes. A keyboard,
 * a mouse and a tablet are profiles of one device, as in QEMU's virtio-input-hid.
 */
import {
  Abs, type AbsInfo, BUS_VIRTUAL, Btn, CONFIG_UNION_BYTES, ConfigSelect, type DevIds, EvType, Led, MAX_CODE, Rel,
  encodeAbsInfo, encodeBitmap, encodeDevIds,
} from './wire.ts';

export type InputKind = 'keyboard' | 'mouse' | 'tablet';
export const INPUT_KINDS: readonly InputKind[] = ['keyboard', 'mouse', 'tablet'];

export interface InputProfile {
  readonly kind: InputKind;
  readonly name: string;
  readonly serial: string;
  readonly ids: DevIds;
  /** INPUT_PROP_* bits. */
  readonly props: readonly number[];
  /** The codes of each event type the device sends (or, for EV_LED, accepts). */
  readonly events: ReadonlyMap<number, readonly number[]>;
  readonly abs: ReadonlyMap<number, AbsInfo>;
}

/** Codes from `from` to `to` inclusive. */
function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/**
 * The absolute range of a tablet axis: 0..32767, the range QEMU's input layer scales pointer
 * positions to, so a host that knows QEMU's tablet knows this one.
 */
export const TABLET_MAX = 0x7fff;

/** Product ids under BUS_VIRTUAL, one per kind, so a guest can tell them apart. */
const PRODUCT: Record<InputKind, number> = { keyboard: 1, mouse: 2, tablet: 3 };

/**
 * A profile of `kind`. The keyboard sends every key code below BTN_MISC (KEY_ESC..KEY_MICMUTE
 * and the function keys above it) and takes the three lock LEDs; it declares no EV_REP, so the
 * guest adds no auto-repeat of its own to what the host types.
 */
export function inputProfile(kind: InputKind, name = `paravirt virtio ${kind}`, serial = ''): InputProfile {
  const ids = { bustype: BUS_VIRTUAL, vendor: 0, product: PRODUCT[kind], version: 1 };
  const buttons = [Btn.LEFT, Btn.RIGHT, Btn.MIDDLE];
  switch (kind) {
    case 'keyboard':
      return {
        kind, name, serial, ids, props: [],
        events: new Map<number, number[]>([[EvType.KEY, range(1, 0xff)], [EvType.LED, [Led.NUML, Led.CAPSL, Led.SCROLLL]]]),
        abs: new Map(),
      };
    case 'mouse':
      return {
        kind, name, serial, ids, props: [],
        events: new Map<number, number[]>([[EvType.KEY, [...buttons, Btn.SIDE, Btn.EXTRA]], [EvType.REL, [Rel.X, Rel.Y, Rel.WHEEL]]]),
        abs: new Map(),
      };
    case 'tablet': {
      const axis: AbsInfo = { min: 0, max: TABLET_MAX, fuzz: 0, flat: 0, res: 0 };
      return {
        kind, name, serial, ids, props: [],
        events: new Map<number, number[]>([[EvType.KEY, buttons], [EvType.REL, [Rel.WHEEL]], [EvType.ABS, [Abs.X, Abs.Y]]]),
        abs: new Map<number, AbsInfo>([[Abs.X, axis], [Abs.Y, axis]]),
      };
    }
  }
}

/** A profile's declarations that the protocol cannot carry; empty when it is servable. */
export function profileErrors(p: InputProfile): string[] {
  const errors: string[] = [];
  const utf8 = (s: string): number => Buffer.byteLength(s, 'utf8');
  if (utf8(p.name) > CONFIG_UNION_BYTES) errors.push(`name "${p.name}" is longer than ${CONFIG_UNION_BYTES} bytes`);
  if (utf8(p.serial) > CONFIG_UNION_BYTES) errors.push(`serial "${p.serial}" is longer than ${CONFIG_UNION_BYTES} bytes`);
  for (const [type, codes] of p.events) {
    if (type < 1 || type > 0xff) errors.push(`event type ${type} is not a subsel`);
    if (codes.some((c) => !Number.isInteger(c) || c < 0 || c > MAX_CODE)) errors.push(`event type ${type} has a code outside 0..${MAX_CODE}`);
  }
  for (const axis of p.abs.keys()) if (!(p.events.get(EvType.ABS) ?? []).includes(axis)) errors.push(`axis ${axis} has ABS_INFO but is not in EV_ABS`);
  return errors;
}

/**
 * The answer to (select, subsel) as §5.8.5.1 has the device give it: the bytes of `u`, whose
 * length becomes `size`; empty when the device has nothing for this question (size 0), which is
 * how the driver learns an event type or axis is absent.
 */
export function configAnswer(p: InputProfile, select: number, subsel: number): Uint8Array {
  const text = (s: string): Uint8Array => (subsel === 0 ? new TextEncoder().encode(s) : new Uint8Array(0));
  switch (select) {
    case ConfigSelect.ID_NAME:
      return text(p.name);
    case ConfigSelect.ID_SERIAL:
      return text(p.serial);
    case ConfigSelect.ID_DEVIDS:
      return subsel === 0 ? encodeDevIds(p.ids) : new Uint8Array(0);
    case ConfigSelect.PROP_BITS:
      return subsel === 0 ? encodeBitmap(p.props) : new Uint8Array(0);
    case ConfigSelect.EV_BITS:
      // Subsel 0 (EV_SYN) is never asked: every device sends SYN_REPORT.
      return subsel === 0 ? new Uint8Array(0) : encodeBitmap(p.events.get(subsel) ?? []);
    case ConfigSelect.ABS_INFO: {
      const info = p.abs.get(subsel);
      return info === undefined ? new Uint8Array(0) : encodeAbsInfo(info);
    }
    default:
      // VIRTIO_INPUT_CFG_UNSET and selects the specification does not define: no answer.
      return new Uint8Array(0);
  }
}
