/**
 * Command descriptor blocks (SPC-5 §4.2, SBC-4 §5): operation codes, big-endian field access and
 * the CDB of every command the disk target implements, with the usage data REPORT SUPPORTED
 * OPERATION CODES returns (SPC-5 §6.35.3: one byte per CDB byte, a bit set where the target
 * looks at that bit). The usage data is also what CDB checking enforces: a bit set in a CDB
 * where the usage data has 0 is a reserved or unsupported field, answered INVALID FIELD IN CDB.
 */
import { CheckCondition, Sense, invalidField } from './sense.ts';

/** Operation codes (SPC-5 Annex D, SBC-4 §5). */
export const Op = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  SYNCHRONIZE_CACHE_10: 0x35,
  WRITE_SAME_10: 0x41,
  UNMAP: 0x42,
  MODE_SENSE_10: 0x5a,
  READ_16: 0x88,
  WRITE_16: 0x8a,
  SYNCHRONIZE_CACHE_16: 0x91,
  WRITE_SAME_16: 0x93,
  /** SERVICE ACTION IN(16): READ CAPACITY(16) is service action 10h. */
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
  /** MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES is service action 0Ch. */
  MAINTENANCE_IN: 0xa3,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
} as const;

export const ServiceAction = {
  READ_CAPACITY_16: 0x10,
  REPORT_SUPPORTED_OPCODES: 0x0c,
} as const;

export function be16(b: Uint8Array, at: number): number {
  return (b[at] << 8) | b[at + 1];
}

export function be32(b: Uint8Array, at: number): number {
  return ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
}

/** A 64-bit field as a number; values of 2^53 or more stay at or above 2^53, so range checks still refuse them. */
export function be64(b: Uint8Array, at: number): number {
  return be32(b, at) * 0x1_0000_0000 + be32(b, at + 4);
}

export function putBe16(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >>> 8) & 0xff;
  b[at + 1] = v & 0xff;
}

export function putBe32(b: Uint8Array, at: number, v: number): void {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, v >>> 0);
}

export function putBe64(b: Uint8Array, at: number, v: number): void {
  putBe32(b, at, Math.floor(v / 0x1_0000_0000));
  putBe32(b, at + 4, v % 0x1_0000_0000);
}

/** One implemented command: its CDB length and usage data (byte 0 is the opcode, all ones). */
export interface CommandUsage {
  readonly opcode: number;
  readonly serviceAction?: number;
  readonly name: string;
  /** CDB usage data: cdb length bytes; bit set = the target interprets that bit. */
  readonly usage: readonly number[];
}

// Usage data per command. The control byte (last) is 0: NACA and link are not supported (SAM-5).
const U = (opcode: number, name: string, usage: number[], serviceAction?: number): CommandUsage => ({
  opcode,
  name,
  serviceAction,
  usage: [0xff, ...usage],
});

/**
 * Everything the disk target implements, in opcode order. Any other opcode is INVALID COMMAND
 * OPERATION CODE (SPC-5 §4.4.4), never silence.
 */
export const COMMANDS: readonly CommandUsage[] = [
  U(Op.TEST_UNIT_READY, 'TEST UNIT READY', [0, 0, 0, 0, 0]),
  // DESC (bit 0) is refused: only fixed-format sense is produced.
  U(Op.REQUEST_SENSE, 'REQUEST SENSE', [0, 0, 0, 0xff, 0]),
  U(Op.READ_6, 'READ(6)', [0x1f, 0xff, 0xff, 0xff, 0]),
  U(Op.WRITE_6, 'WRITE(6)', [0x1f, 0xff, 0xff, 0xff, 0]),
  U(Op.INQUIRY, 'INQUIRY', [0x01, 0xff, 0xff, 0xff, 0]),
  // DBD, PC, page code, subpage, allocation length.
  U(Op.MODE_SENSE_6, 'MODE SENSE(6)', [0x08, 0xff, 0xff, 0xff, 0]),
  // IMMED, power condition modifier, power condition, NO_FLUSH, LOEJ, START.
  U(Op.START_STOP_UNIT, 'START STOP UNIT', [0x01, 0, 0x0f, 0xf7, 0]),
  U(Op.READ_CAPACITY_10, 'READ CAPACITY(10)', [0, 0, 0, 0, 0, 0, 0, 0, 0]),
  // DPO and FUA accepted (FUA makes the write durable before completion); protection fields 0.
  U(Op.READ_10, 'READ(10)', [0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]),
  U(Op.WRITE_10, 'WRITE(10)', [0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]),
  U(Op.SYNCHRONIZE_CACHE_10, 'SYNCHRONIZE CACHE(10)', [0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]),
  // UNMAP bit (3) honoured; ANCHOR and protection refused.
  U(Op.WRITE_SAME_10, 'WRITE SAME(10)', [0x08, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]),
  U(Op.UNMAP, 'UNMAP', [0, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
  U(Op.MODE_SENSE_10, 'MODE SENSE(10)', [0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]),
  U(Op.READ_16, 'READ(16)', [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
  U(Op.WRITE_16, 'WRITE(16)', [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
  U(Op.SYNCHRONIZE_CACHE_16, 'SYNCHRONIZE CACHE(16)', [0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
  U(Op.WRITE_SAME_16, 'WRITE SAME(16)', [0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
  U(Op.SERVICE_ACTION_IN_16, 'READ CAPACITY(16)', [0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], ServiceAction.READ_CAPACITY_16),
  U(Op.REPORT_LUNS, 'REPORT LUNS', [0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
  U(Op.MAINTENANCE_IN, 'REPORT SUPPORTED OPERATION CODES', [0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], ServiceAction.REPORT_SUPPORTED_OPCODES),
  U(Op.READ_12, 'READ(12)', [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
  U(Op.WRITE_12, 'WRITE(12)', [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
];

/** Commands whose service action (byte 1, bits 4-0) selects the command. */
const SERVICE_ACTION_OPS: ReadonlySet<number> = new Set([Op.SERVICE_ACTION_IN_16, Op.MAINTENANCE_IN]);

/** The implemented command a CDB names, or undefined (INVALID COMMAND OPERATION CODE). */
export function lookupCommand(cdb: Uint8Array): CommandUsage | undefined {
  const opcode = cdb[0];
  const sa = SERVICE_ACTION_OPS.has(opcode) ? cdb[1] & 0x1f : undefined;
  return COMMANDS.find((c) => c.opcode === opcode && c.serviceAction === sa);
}

/**
 * Find the implemented command a CDB names and check its bits against the usage data: the CDB
 * must be whole (a virtio-scsi cdb field shorter than the command is refused), and every bit the
 * usage data leaves clear must be 0. Returns the command; throws CheckCondition.
 */
export function checkCdb(cdb: Uint8Array): CommandUsage {
  if (cdb.length === 0) throw new CheckCondition(Sense.INVALID_OPCODE);
  const command = lookupCommand(cdb);
  if (command === undefined) {
    // A known opcode with an unknown service action points at the service action field.
    if (SERVICE_ACTION_OPS.has(cdb[0])) throw invalidField(1, 4);
    throw new CheckCondition(Sense.INVALID_OPCODE);
  }
  if (cdb.length < command.usage.length) throw new CheckCondition(Sense.INVALID_OPCODE);
  for (let i = 1; i < command.usage.length; i++) {
    const stray = cdb[i] & ~command.usage[i] & 0xff;
    if (command.serviceAction !== undefined && i === 1 && (stray & 0x1f) !== 0) continue;
    if (stray !== 0) throw invalidField(i, 31 - Math.clz32(stray));
  }
  return command;
}

/** A READ or WRITE: first logical block, block count and whether the write must reach stable storage (FUA). */
export interface Transfer {
  readonly lba: number;
  readonly blocks: number;
  readonly fua: boolean;
}

/** Decode the LBA and transfer length of READ/WRITE (6/10/12/16) (SBC-4 §5.15-5.20, §5.40-5.45). */
export function transferOf(cdb: Uint8Array): Transfer {
  switch (cdb[0]) {
    case Op.READ_6:
    case Op.WRITE_6:
      // SBC-4 §5.15: a transfer length of 0 in a 6-byte CDB means 256 blocks.
      return { lba: ((cdb[1] & 0x1f) << 16) | be16(cdb, 2), blocks: cdb[4] === 0 ? 256 : cdb[4], fua: false };
    case Op.READ_10:
    case Op.WRITE_10:
      return { lba: be32(cdb, 2), blocks: be16(cdb, 7), fua: (cdb[1] & 0x08) !== 0 };
    case Op.READ_12:
    case Op.WRITE_12:
      return { lba: be32(cdb, 2), blocks: be32(cdb, 6), fua: (cdb[1] & 0x08) !== 0 };
    default:
      return { lba: be64(cdb, 2), blocks: be32(cdb, 10), fua: (cdb[1] & 0x08) !== 0 };
  }
}

/** A range of logical blocks (SYNCHRONIZE CACHE, WRITE SAME): LBA and count, 0 meaning "to the end" where the command says so. */
export function rangeOf(cdb: Uint8Array): { lba: number; blocks: number } {
  return cdb.length >= 16 && (cdb[0] & 0xe0) === 0x80 ? { lba: be64(cdb, 2), blocks: be32(cdb, 10) } : { lba: be32(cdb, 2), blocks: be16(cdb, 7) };
}
