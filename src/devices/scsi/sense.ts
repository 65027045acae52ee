/**
 * SCSI status and sense data (SAM-5 §5.3, SPC-5 §4.4): every command the target refuses ends in
 * CHECK CONDITION with fixed-format sense data saying why. Sense is a value (SenseData), thrown
 * as a CheckCondition by the code that finds the fault and turned into bytes once, here.
 */

/** SAM-5 §5.3.1 status codes. */
export const Status = {
  GOOD: 0x00,
  CHECK_CONDITION: 0x02,
  BUSY: 0x08,
  RESERVATION_CONFLICT: 0x18,
  TASK_SET_FULL: 0x28,
  TASK_ABORTED: 0x40,
} as const;

/** SPC-5 §4.4.8 sense keys. */
export const SenseKey = {
  NO_SENSE: 0x0,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
} as const;

/** A sense key with its additional sense code and qualifier (SPC-5 Table 49). */
export interface SenseCode {
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
}

const code = (key: number, asc: number, ascq: number): SenseCode => ({ key, asc, ascq });

/** The sense codes the target reports. */
export const Sense = {
  NO_SENSE: code(SenseKey.NO_SENSE, 0x00, 0x00),
  /** 04/02: a stopped unit (START STOP UNIT with START=0) refuses media access. */
  NOT_READY_START_REQUIRED: code(SenseKey.NOT_READY, 0x04, 0x02),
  /** 11/00: a read failed on the backing file. */
  UNRECOVERED_READ_ERROR: code(SenseKey.MEDIUM_ERROR, 0x11, 0x00),
  /** 0C/00: a write, flush or unmap failed on the backing file. */
  WRITE_ERROR: code(SenseKey.MEDIUM_ERROR, 0x0c, 0x00),
  PARAMETER_LIST_LENGTH_ERROR: code(SenseKey.ILLEGAL_REQUEST, 0x1a, 0x00),
  INVALID_OPCODE: code(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00),
  LBA_OUT_OF_RANGE: code(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00),
  INVALID_FIELD_IN_CDB: code(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00),
  LUN_NOT_SUPPORTED: code(SenseKey.ILLEGAL_REQUEST, 0x25, 0x00),
  INVALID_FIELD_IN_PARAMETER_LIST: code(SenseKey.ILLEGAL_REQUEST, 0x26, 0x00),
  /** 27/00: a write to a read-only LUN. */
  WRITE_PROTECTED: code(SenseKey.DATA_PROTECT, 0x27, 0x00),
  /** 29/00: the unit was reset (power on, LOGICAL UNIT RESET, I_T NEXUS RESET, device reset). */
  RESET_OCCURRED: code(SenseKey.UNIT_ATTENTION, 0x29, 0x00),
  /** 2A/09: READ CAPACITY would now answer differently. */
  CAPACITY_CHANGED: code(SenseKey.UNIT_ATTENTION, 0x2a, 0x09),
  /** 3F/0E: LUNs were added to or removed from the target. */
  REPORTED_LUNS_CHANGED: code(SenseKey.UNIT_ATTENTION, 0x3f, 0x0e),
} as const;

/** Where in the CDB or parameter list the fault is (SPC-5 §4.4.2.4.2, the sense-key specific field pointer). */
export interface FieldPointer {
  /** True: the CDB; false: the parameter list. */
  readonly inCdb: boolean;
  readonly byte: number;
  /** Bit within the byte (0-7), when the fault is one field narrower than the byte. */
  readonly bit?: number;
}

/** Fixed-format sense data is 18 bytes: 8 of header and 10 "additional" (SPC-5 §4.4.3). */
export const FIXED_SENSE_SIZE = 18;

/** A command's failure: CHECK CONDITION with this sense. Thrown inside the target, caught where the command ends. */
export class CheckCondition extends Error {
  constructor(
    readonly sense: SenseCode,
    readonly field?: FieldPointer,
    /** The INFORMATION field, e.g. the first LBA a medium error hit. */
    readonly information?: number,
  ) {
    super(`sense ${sense.key.toString(16)}/${sense.asc.toString(16).padStart(2, '0')}/${sense.ascq.toString(16).padStart(2, '0')}`);
    this.name = 'CheckCondition';
  }
}

/** A CDB field holds a value the target does not accept: 24/00 pointing at it. */
export function invalidField(byte: number, bit?: number): CheckCondition {
  return new CheckCondition(Sense.INVALID_FIELD_IN_CDB, { inCdb: true, byte, bit });
}

/** A parameter list field holds a value the target does not accept: 26/00 pointing at it. */
export function invalidParameter(byte: number, bit?: number): CheckCondition {
  return new CheckCondition(Sense.INVALID_FIELD_IN_PARAMETER_LIST, { inCdb: false, byte, bit });
}

/** Encode fixed-format sense data (response code 70h, current error; SPC-5 §4.4.3). */
export function fixedSense(sense: SenseCode, field?: FieldPointer, information?: number): Uint8Array {
  const out = new Uint8Array(FIXED_SENSE_SIZE);
  out[0] = 0x70;
  out[2] = sense.key & 0x0f;
  if (information !== undefined && information >= 0 && information <= 0xffff_ffff) {
    out[0] |= 0x80; // VALID: INFORMATION is meaningful
    new DataView(out.buffer).setUint32(3, information);
  }
  out[7] = FIXED_SENSE_SIZE - 8;
  out[12] = sense.asc;
  out[13] = sense.ascq;
  if (field !== undefined) {
    // SKSV, C/D, BPV and the bit pointer, then the byte as a big-endian field pointer.
    out[15] = 0x80 | (field.inCdb ? 0x40 : 0) | (field.bit !== undefined ? 0x08 | (field.bit & 7) : 0);
    out[16] = (field.byte >> 8) & 0xff;
    out[17] = field.byte & 0xff;
  }
  return out;
}

/** What fixed or descriptor-format sense data says (SPC-5 §4.4), as an initiator reads it. */
export interface DecodedSense extends SenseCode {
  readonly information?: number;
}

/** Decode sense data of either format; undefined when it is too short or of an unknown response code. */
export function decodeSense(bytes: Uint8Array): DecodedSense | undefined {
  if (bytes.length < 1) return undefined;
  const responseCode = bytes[0] & 0x7f;
  if ((responseCode === 0x70 || responseCode === 0x71) && bytes.length >= 14) {
    const valid = (bytes[0] & 0x80) !== 0;
    const information = valid ? new DataView(bytes.buffer, bytes.byteOffset).getUint32(3) : undefined;
    return { key: bytes[2] & 0x0f, asc: bytes[12], ascq: bytes[13], information };
  }
  if ((responseCode === 0x72 || responseCode === 0x73) && bytes.length >= 4) {
    return { key: bytes[1] & 0x0f, asc: bytes[2], ascq: bytes[3] };
  }
  return undefined;
}
