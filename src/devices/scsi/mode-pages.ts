/**
 * MODE SENSE(6) and MODE SENSE(10) of a disk LUN (SPC-5 §6.13-6.14, §7.5): the mode parameter
 * header, one block descriptor, and the caching (08h, SBC-4 §6.5.5) and control (0Ah, SPC-5
 * §7.5.8) pages. No page is changeable (MODE SELECT is not implemented) and none is saved.
 */
import { Op, be16, putBe16, putBe32, putBe64 } from './cdb.ts';
import { CheckCondition, SenseKey, invalidField } from './sense.ts';

export const ModePage = { CACHING: 0x08, CONTROL: 0x0a, ALL: 0x3f } as const;

/** Page control (CDB byte 2, bits 7-6). */
const PageControl = { CURRENT: 0, CHANGEABLE: 1, DEFAULT: 2, SAVED: 3 } as const;

/** 39/00 SAVING PARAMETERS NOT SUPPORTED (SPC-5 §6.13: saved values asked of a target without them). */
const SAVING_NOT_SUPPORTED = new CheckCondition({ key: SenseKey.ILLEGAL_REQUEST, asc: 0x39, ascq: 0x00 }, { inCdb: true, byte: 2, bit: 7 });

export interface ModeState {
  readonly blocks: number;
  readonly blockSize: number;
  readonly readOnly: boolean;
  /** Writes complete from a volatile cache that SYNCHRONIZE CACHE flushes (WCE). */
  readonly writeCache: boolean;
}

/** Caching mode page (SBC-4 §6.5.5): WCE as the disk behaves; a changeable mask of zeroes. */
function caching(state: ModeState, changeable: boolean): Uint8Array {
  const p = new Uint8Array(20);
  p[0] = ModePage.CACHING;
  p[1] = p.length - 2;
  if (!changeable && state.writeCache) p[2] = 0x04; // WCE
  return p;
}

/**
 * Control mode page (SPC-5 §7.5.8): fixed-format sense (D_SENSE 0), unrestricted reordering
 * (QUEUE ALGORITHM MODIFIER 1: the device completes commands in any order), TAS 0.
 */
function control(changeable: boolean): Uint8Array {
  const p = new Uint8Array(12);
  p[0] = ModePage.CONTROL;
  p[1] = p.length - 2;
  if (!changeable) {
    p[3] = 0x10;
    putBe16(p, 10, 0xffff); // EXTENDED SELF-TEST COMPLETION TIME: not applicable
  }
  return p;
}

function pages(code: number, subpage: number, state: ModeState, changeable: boolean): Uint8Array[] {
  if (subpage !== 0 && !(code === ModePage.ALL && subpage === 0xff)) throw invalidField(3);
  switch (code) {
    case ModePage.CACHING:
      return [caching(state, changeable)];
    case ModePage.CONTROL:
      return [control(changeable)];
    case ModePage.ALL:
      return [caching(state, changeable), control(changeable)];
    default:
      throw invalidField(2, 5);
  }
}

/** A block descriptor (SPC-5 §7.5.5): short (8 bytes) or, with LLBAA in MODE SENSE(10), long (16). */
function blockDescriptor(state: ModeState, long: boolean): Uint8Array {
  if (long) {
    const d = new Uint8Array(16);
    putBe64(d, 0, state.blocks);
    putBe32(d, 12, state.blockSize);
    return d;
  }
  const d = new Uint8Array(8);
  putBe32(d, 0, Math.min(state.blocks, 0xffff_ffff));
  putBe32(d, 4, state.blockSize & 0xff_ffff);
  return d;
}

/** The whole MODE SENSE answer for `cdb` (the caller trims it to the allocation length). */
export function modeSense(cdb: Uint8Array, state: ModeState): Uint8Array {
  const ten = cdb[0] === Op.MODE_SENSE_10;
  const dbd = (cdb[1] & 0x08) !== 0;
  const llbaa = ten && (cdb[1] & 0x10) !== 0;
  const pc = cdb[2] >> 6;
  if (pc === PageControl.SAVED) throw SAVING_NOT_SUPPORTED;
  const body = pages(cdb[2] & 0x3f, cdb[3], state, pc === PageControl.CHANGEABLE);
  const descriptor = dbd ? new Uint8Array(0) : blockDescriptor(state, llbaa);
  const headerSize = ten ? 8 : 4;
  const size = headerSize + descriptor.length + body.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(size);
  // Device-specific parameter (SBC-4 §6.5.1): WP, DPOFUA.
  const deviceSpecific = (state.readOnly ? 0x80 : 0) | 0x10;
  if (ten) {
    putBe16(out, 0, size - 2);
    out[3] = deviceSpecific;
    if (llbaa && !dbd) out[4] = 0x01; // LONGLBA
    putBe16(out, 6, descriptor.length);
  } else {
    out[0] = size - 1;
    out[2] = deviceSpecific;
    out[3] = descriptor.length;
  }
  let at = headerSize;
  out.set(descriptor, at);
  at += descriptor.length;
  for (const p of body) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The allocation length of a MODE SENSE CDB. */
export function modeSenseAllocation(cdb: Uint8Array): number {
  return cdb[0] === Op.MODE_SENSE_10 ? be16(cdb, 7) : cdb[4];
}
