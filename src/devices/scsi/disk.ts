/**
 * A disk logical unit (SBC-4) on a BlockBackend: the commands of cdb.ts COMMANDS, executed against
 * the file with the guest's buffers (zero-copy for READ and WRITE). Every CDB is hostile: it is
 * checked against the usage data, every LBA range against the capacity and every transfer against
 * the buffers the request brought. A refusal is a CheckCondition; a transfer larger than its
 * buffer is a TransferOverrun, which the transport reports as VIRTIO_SCSI_S_OVERRUN (§5.6.6.1).
 *
 * Unit attention (SAM-5 §5.14): a reset or a capacity change queues a unit attention condition,
 * reported once by the next command other than INQUIRY, REPORT LUNS and REQUEST SENSE (SPC-5
 * §5.14 / SAM-5 Table 41), or returned as sense data by REQUEST SENSE.
 */
import type { BlockBackend } from '../../storage/block-backend.ts';
import { COMMANDS, Op, be16, be32, be64, checkCdb, putBe16, putBe32, putBe64, rangeOf, transferOf } from './cdb.ts';
import { type DiskIdentity, naaFor, standardInquiry, vpdPage } from './inquiry.ts';
import { modeSense, modeSenseAllocation } from './mode-pages.ts';
import { CheckCondition, Sense, type SenseCode, fixedSense, invalidField, invalidParameter } from './sense.ts';

/** Logical block size: the smallest a SCSI disk reports, and the unit of the storage layer. */
export const BLOCK_SIZE = 512;
const BLOCK_SHIFT = 9;

/** Where a command's data comes from (data-out) and goes to (data-in); a ChainReader and ChainWriter fit. */
export interface DataOut {
  readonly remaining: number;
  readExact(n: number): Uint8Array | undefined;
  segments(n: number): Uint8Array[];
}

export interface DataIn {
  readonly remaining: number;
  write(bytes: Uint8Array): number;
  segments(n: number): Uint8Array[];
}

export interface CommandData {
  readonly out: DataOut;
  readonly in: DataIn;
}

/** The CDB asks for more data than the request's buffers hold (§5.6.6.1 VIRTIO_SCSI_S_OVERRUN). */
export class TransferOverrun extends Error {
  constructor(wanted: number, available: number) {
    super(`transfer of ${wanted} bytes into a buffer of ${available}`);
    this.name = 'TransferOverrun';
  }
}

export interface DiskOptions {
  readonly backend: BlockBackend;
  readonly readOnly?: boolean;
  /** VPD 80h and the seed of the NAA identifier; printable ASCII, at most 64 characters. */
  readonly serial: string;
  /** Most blocks one READ or WRITE moves (default 65535, QEMU's max_sectors). */
  readonly maxTransferBlocks?: number;
}

/** Most blocks one UNMAP descriptor or WRITE SAME covers (1 GiB), and descriptors per UNMAP. */
const MAX_UNMAP_BLOCKS = (1 << 30) / BLOCK_SIZE;
const MAX_UNMAP_DESCRIPTORS = 256;
/** UNMAP parameter list: an 8-byte header and 16-byte block descriptors (SBC-4 §5.32.2). */
const UNMAP_HEADER = 8;
const UNMAP_DESCRIPTOR = 16;
/** Pattern bytes WRITE SAME writes per backend call when the block is not all zeroes. */
const WRITE_SAME_CHUNK = 64 * 1024;

/** Commands that neither report nor clear a unit attention (SAM-5 §5.14). */
const UA_EXEMPT: ReadonlySet<number> = new Set([Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE]);

/** Commands refused on a read-only LUN with DATA PROTECT / WRITE PROTECTED (SBC-4 §4.11). */
const WRITES: ReadonlySet<number> = new Set([Op.WRITE_6, Op.WRITE_10, Op.WRITE_12, Op.WRITE_16, Op.WRITE_SAME_10, Op.WRITE_SAME_16, Op.UNMAP]);

/** Commands that access the medium, refused while the unit is stopped (SBC-4 §4.20). */
const MEDIA_ACCESS: ReadonlySet<number> = new Set([...WRITES, Op.READ_6, Op.READ_10, Op.READ_12, Op.READ_16, Op.SYNCHRONIZE_CACHE_10, Op.SYNCHRONIZE_CACHE_16]);

function serialError(serial: string): string | undefined {
  return /^[\x21-\x7e]{1,64}$/.test(serial) ? undefined : `serial "${serial}" is not 1 to 64 printable ASCII characters without spaces`;
}

/** Send `bytes` as data-in, cut to the allocation length (SPC-5 §4.2.5.6); more than the buffer holds is an overrun. */
export function sendData(data: CommandData, bytes: Uint8Array, allocation: number): void {
  const n = Math.min(bytes.length, allocation);
  if (n > data.in.remaining) throw new TransferOverrun(n, data.in.remaining);
  data.in.write(bytes.subarray(0, n));
}

export class ScsiDisk {
  readonly readOnly: boolean;
  readonly serial: string;
  private backend: BlockBackend;
  private readonly maxTransferBlocks: number;
  /** Unit attention conditions not yet reported, oldest first. */
  private readonly attentions: SenseCode[] = [Sense.RESET_OCCURRED];
  private stopped = false;
  private naa: Uint8Array;

  constructor(options: DiskOptions) {
    const bad = serialError(options.serial);
    if (bad !== undefined) throw new RangeError(`SCSI disk ${bad}`);
    this.backend = options.backend;
    if (this.backend.size % BLOCK_SIZE !== 0 || this.backend.size === 0) {
      throw new RangeError(`SCSI disk of ${this.backend.size} bytes is not a non-zero whole number of ${BLOCK_SIZE}-byte blocks`);
    }
    this.readOnly = (options.readOnly ?? false) || this.backend.readOnly;
    this.serial = options.serial;
    this.naa = naaFor(options.serial);
    this.maxTransferBlocks = options.maxTransferBlocks ?? 0xffff;
  }

  /** Capacity in logical blocks. */
  get blocks(): number {
    return this.backend.size / BLOCK_SIZE;
  }

  get storage(): BlockBackend {
    return this.backend;
  }

  /**
   * The disk now lives in `backend` (a resized image): READ CAPACITY answers anew and the next
   * command reports CAPACITY DATA HAS CHANGED. Returns the backend it replaced.
   */
  replaceBackend(backend: BlockBackend): BlockBackend {
    if (backend.size % BLOCK_SIZE !== 0 || backend.size === 0) {
      throw new RangeError(`SCSI disk of ${backend.size} bytes is not a non-zero whole number of ${BLOCK_SIZE}-byte blocks`);
    }
    const old = this.backend;
    this.backend = backend;
    this.attention(Sense.CAPACITY_CHANGED);
    return old;
  }

  /** A LOGICAL UNIT RESET, I_T NEXUS RESET or device reset happened: 29/00 (SAM-5 §6.3). */
  reset(): void {
    this.stopped = false;
    this.attention(Sense.RESET_OCCURRED);
  }

  /** Queue a unit attention condition, once. */
  attention(sense: SenseCode): void {
    if (!this.attentions.includes(sense)) this.attentions.push(sense);
  }

  private get identity(): DiskIdentity {
    return {
      serial: this.serial,
      naa: this.naa,
      blocks: this.blocks,
      maxTransferBlocks: this.maxTransferBlocks,
      maxUnmapBlocks: MAX_UNMAP_BLOCKS,
      maxUnmapDescriptors: MAX_UNMAP_DESCRIPTORS,
      provisioning: !this.readOnly,
    };
  }

  /** Execute one command. Resolves when it completed GOOD; rejects with CheckCondition or TransferOverrun. */
  async execute(cdb: Uint8Array, data: CommandData): Promise<void> {
    const command = checkCdb(cdb);
    const op = command.opcode;
    if (!UA_EXEMPT.has(op)) {
      const ua = this.attentions.shift();
      if (ua !== undefined) throw new CheckCondition(ua);
    }
    if (this.readOnly && WRITES.has(op)) throw new CheckCondition(Sense.WRITE_PROTECTED);
    if (this.stopped && MEDIA_ACCESS.has(op)) throw new CheckCondition(Sense.NOT_READY_START_REQUIRED);
    switch (op) {
      case Op.TEST_UNIT_READY:
        if (this.stopped) throw new CheckCondition(Sense.NOT_READY_START_REQUIRED);
        return;
      case Op.REQUEST_SENSE:
        return this.requestSense(cdb, data);
      case Op.INQUIRY:
        return this.inquiry(cdb, data);
      case Op.MODE_SENSE_6:
      case Op.MODE_SENSE_10:
        sendData(data, modeSense(cdb, { blocks: this.blocks, blockSize: BLOCK_SIZE, readOnly: this.readOnly, writeCache: true }), modeSenseAllocation(cdb));
        return;
      case Op.START_STOP_UNIT:
        return this.startStop(cdb);
      case Op.READ_CAPACITY_10:
        return this.readCapacity10(data);
      case Op.SERVICE_ACTION_IN_16:
        return this.readCapacity16(cdb, data);
      case Op.MAINTENANCE_IN:
        return reportSupportedOpcodes(cdb, data);
      case Op.READ_6:
      case Op.READ_10:
      case Op.READ_12:
      case Op.READ_16:
        return this.read(cdb, data);
      case Op.WRITE_6:
      case Op.WRITE_10:
      case Op.WRITE_12:
      case Op.WRITE_16:
        return this.write(cdb, data);
      case Op.SYNCHRONIZE_CACHE_10:
      case Op.SYNCHRONIZE_CACHE_16:
        return this.synchronizeCache(cdb);
      case Op.WRITE_SAME_10:
      case Op.WRITE_SAME_16:
        return this.writeSame(cdb, data);
      case Op.UNMAP:
        return this.unmap(cdb, data);
      default:
        // REPORT LUNS belongs to the target (target.ts), which answers it before reaching a LUN.
        throw new CheckCondition(Sense.INVALID_OPCODE);
    }
  }

  /** Check [lba, lba + blocks) lies on the disk (LBA OUT OF RANGE, SBC-4 §4.5) and within the transfer limit. */
  private checkRange(lba: number, blocks: number, lengthByte: number): void {
    if (blocks > this.blocks || lba > this.blocks - blocks) throw new CheckCondition(Sense.LBA_OUT_OF_RANGE);
    if (blocks > this.maxTransferBlocks) throw invalidField(lengthByte);
  }

  private async read(cdb: Uint8Array, data: CommandData): Promise<void> {
    const { lba, blocks } = transferOf(cdb);
    this.checkRange(lba, blocks, lengthField(cdb));
    const bytes = blocks << BLOCK_SHIFT;
    if (bytes > data.in.remaining) throw new TransferOverrun(bytes, data.in.remaining);
    if (bytes === 0) return;
    try {
      await this.backend.read(lba * BLOCK_SIZE, data.in.segments(bytes));
    } catch {
      throw new CheckCondition(Sense.UNRECOVERED_READ_ERROR, undefined, lba);
    }
  }

  private async write(cdb: Uint8Array, data: CommandData): Promise<void> {
    const { lba, blocks, fua } = transferOf(cdb);
    this.checkRange(lba, blocks, lengthField(cdb));
    const bytes = blocks << BLOCK_SHIFT;
    if (bytes > data.out.remaining) throw new TransferOverrun(bytes, data.out.remaining);
    if (bytes === 0) return;
    try {
      await this.backend.write(lba * BLOCK_SIZE, data.out.segments(bytes));
      // FUA (SBC-4 §5.41): the blocks are on stable storage before GOOD.
      if (fua) await this.backend.flush();
    } catch {
      throw new CheckCondition(Sense.WRITE_ERROR, undefined, lba);
    }
  }

  /** SYNCHRONIZE CACHE (SBC-4 §5.28): the range is checked, then the whole file is synced. */
  private async synchronizeCache(cdb: Uint8Array): Promise<void> {
    const { lba, blocks } = rangeOf(cdb);
    // A count of 0 means "to the last block" (SBC-4 §5.28).
    if (lba > this.blocks || (blocks > 0 && (blocks > this.blocks || lba > this.blocks - blocks))) throw new CheckCondition(Sense.LBA_OUT_OF_RANGE);
    try {
      await this.backend.flush();
    } catch {
      throw new CheckCondition(Sense.WRITE_ERROR);
    }
  }

  /**
   * WRITE SAME (SBC-4 §5.50-5.51): one block from data-out written over the range. With UNMAP and
   * an all-zero block the range is deallocated instead (a hole reads back zero, LBPRZ), which is
   * how Linux issues discards when UNMAP is not chosen.
   */
  private async writeSame(cdb: Uint8Array, data: CommandData): Promise<void> {
    const sixteen = cdb[0] === Op.WRITE_SAME_16;
    const { lba, blocks } = rangeOf(cdb);
    const lengthByte = sixteen ? 10 : 7;
    if (blocks === 0 || blocks > MAX_UNMAP_BLOCKS) throw invalidField(lengthByte); // WSNZ
    if (blocks > this.blocks || lba > this.blocks - blocks) throw new CheckCondition(Sense.LBA_OUT_OF_RANGE);
    if (sixteen && (cdb[1] & 0x01) !== 0) throw invalidField(1, 0); // NDOB: a data-out block is required here
    const block = data.out.readExact(BLOCK_SIZE);
    if (block === undefined) throw new TransferOverrun(BLOCK_SIZE, data.out.remaining);
    const offset = lba * BLOCK_SIZE;
    const length = blocks * BLOCK_SIZE;
    try {
      if (block.every((b) => b === 0)) {
        await this.backend.writeZeroes(offset, length, (cdb[1] & 0x08) !== 0);
        return;
      }
      const pattern = new Uint8Array(Math.min(WRITE_SAME_CHUNK, length));
      for (let at = 0; at < pattern.length; at += BLOCK_SIZE) pattern.set(block, at);
      for (let at = 0; at < length; at += pattern.length) {
        await this.backend.write(offset + at, [pattern.subarray(0, Math.min(pattern.length, length - at))]);
      }
    } catch {
      throw new CheckCondition(Sense.WRITE_ERROR, undefined, lba);
    }
  }

  /** UNMAP (SBC-4 §5.32): every descriptor's range is checked first, then each becomes a hole. */
  private async unmap(cdb: Uint8Array, data: CommandData): Promise<void> {
    const listLength = be16(cdb, 7);
    if (listLength === 0) return; // SBC-4 §5.32.1: not an error, nothing to do
    if (listLength < UNMAP_HEADER) throw new CheckCondition(Sense.PARAMETER_LIST_LENGTH_ERROR);
    if (listLength > data.out.remaining) throw new TransferOverrun(listLength, data.out.remaining);
    const list = data.out.readExact(listLength)!;
    const descriptorBytes = Math.min(be16(list, 2), listLength - UNMAP_HEADER);
    const count = Math.floor(descriptorBytes / UNMAP_DESCRIPTOR);
    if (count > MAX_UNMAP_DESCRIPTORS) throw invalidParameter(2);
    const ranges: { lba: number; blocks: number }[] = [];
    for (let i = 0; i < count; i++) {
      const at = UNMAP_HEADER + i * UNMAP_DESCRIPTOR;
      const lba = be64(list, at);
      const blocks = be32(list, at + 8);
      if (blocks > MAX_UNMAP_BLOCKS) throw invalidParameter(at + 8);
      if (blocks > this.blocks || lba > this.blocks - blocks) throw new CheckCondition(Sense.LBA_OUT_OF_RANGE);
      if (blocks > 0) ranges.push({ lba, blocks });
    }
    try {
      await Promise.all(ranges.map((r) => this.backend.writeZeroes(r.lba * BLOCK_SIZE, r.blocks * BLOCK_SIZE, true)));
    } catch {
      throw new CheckCondition(Sense.WRITE_ERROR);
    }
  }

  private inquiry(cdb: Uint8Array, data: CommandData): void {
    const allocation = be16(cdb, 3);
    if ((cdb[1] & 0x01) === 0) {
      // Standard data: a page code without EVPD is invalid (SPC-5 §6.7.1).
      if (cdb[2] !== 0) throw invalidField(2);
      sendData(data, standardInquiry(), allocation);
      return;
    }
    sendData(data, vpdPage(cdb[2], this.identity), allocation);
  }

  /** REQUEST SENSE (SPC-5 §6.39): the pending unit attention (now cleared), or NO SENSE. */
  private requestSense(cdb: Uint8Array, data: CommandData): void {
    const ua = this.attentions.shift();
    const sense = ua ?? (this.stopped ? Sense.NOT_READY_START_REQUIRED : Sense.NO_SENSE);
    sendData(data, fixedSense(sense), cdb[4]);
  }

  /**
   * START STOP UNIT (SBC-4 §5.25): START=0 stops the unit, START=1 starts it; power conditions
   * other than START_VALID (0) and LOEJ (no removable medium) are refused.
   */
  private async startStop(cdb: Uint8Array): Promise<void> {
    if (cdb[4] >> 4 !== 0) throw invalidField(4, 7);
    if ((cdb[4] & 0x02) !== 0) throw invalidField(4, 1);
    const start = (cdb[4] & 0x01) !== 0;
    // Stopping flushes the cache unless NO_FLUSH (SBC-4 §5.25).
    if (!start && (cdb[4] & 0x04) === 0) {
      try {
        await this.backend.flush();
      } catch {
        throw new CheckCondition(Sense.WRITE_ERROR);
      }
    }
    this.stopped = !start;
  }

  private readCapacity10(data: CommandData): void {
    const out = new Uint8Array(8);
    // A disk of 2^32 blocks or more answers FFFFFFFFh: READ CAPACITY(16) has the size (SBC-4 §5.23).
    putBe32(out, 0, Math.min(this.blocks - 1, 0xffff_ffff));
    putBe32(out, 4, BLOCK_SIZE);
    sendData(data, out, out.length);
  }

  /** READ CAPACITY(16) (SBC-4 §5.24): last LBA, block size, LBPME and LBPRZ when provisioning is offered. */
  private readCapacity16(cdb: Uint8Array, data: CommandData): void {
    const out = new Uint8Array(32);
    putBe64(out, 0, this.blocks - 1);
    putBe32(out, 8, BLOCK_SIZE);
    if (!this.readOnly) out[14] = 0x80 | 0x40; // LBPME, LBPRZ
    sendData(data, out, be32(cdb, 10));
  }
}

/** The byte of a READ/WRITE CDB where its transfer length starts, for a field pointer. */
function lengthField(cdb: Uint8Array): number {
  switch (cdb[0] >> 5) {
    case 0:
      return 4;
    case 1:
      return 7;
    case 5:
      return 6;
    default:
      return 10;
  }
}

/**
 * REPORT SUPPORTED OPERATION CODES (SPC-5 §6.35): reporting option 000b lists every command,
 * 001b one opcode without service action, 010b one opcode with its service action; the one-
 * command forms carry the CDB usage data. RCTD (timeouts) is not supported.
 */
function reportSupportedOpcodes(cdb: Uint8Array, data: CommandData): void {
  if ((cdb[2] & 0x80) !== 0) throw invalidField(2, 7);
  const option = cdb[2] & 0x07;
  const allocation = be32(cdb, 6);
  const opcode = cdb[3];
  const sa = be16(cdb, 4);
  if (option === 0) {
    const out = new Uint8Array(4 + COMMANDS.length * 8);
    putBe32(out, 0, COMMANDS.length * 8);
    COMMANDS.forEach((c, i) => {
      const at = 4 + i * 8;
      out[at] = c.opcode;
      putBe16(out, at + 2, c.serviceAction ?? 0);
      out[at + 5] = c.serviceAction !== undefined ? 0x01 : 0; // SERVACTV
      putBe16(out, at + 6, c.usage.length);
    });
    sendData(data, out, allocation);
    return;
  }
  if (option !== 1 && option !== 2) throw invalidField(2, 2);
  const withSa = COMMANDS.filter((c) => c.opcode === opcode).some((c) => c.serviceAction !== undefined);
  // Option 1 on an opcode that has service actions, or 2 on one that has none, is invalid (SPC-5 §6.35.2).
  if (option === 1 && withSa) throw invalidField(2, 2);
  if (option === 2 && !withSa && COMMANDS.some((c) => c.opcode === opcode)) throw invalidField(2, 2);
  const command = COMMANDS.find((c) => c.opcode === opcode && (option === 1 || c.serviceAction === sa));
  // SPC-5 §6.35.3: usage data begins with the opcode, and a service action sits in byte 1's low bits.
  const usage = command === undefined ? [] : command.usage.map((u, i) => (i === 0 ? command.opcode : i === 1 && command.serviceAction !== undefined ? (u & 0xe0) | command.serviceAction : u));
  const out = new Uint8Array(4 + usage.length);
  out[1] = command === undefined ? 0x01 : 0x03; // SUPPORT: 001b not supported, 011b supported as the standard says
  putBe16(out, 2, usage.length);
  out.set(usage, 4);
  sendData(data, out, allocation);
}
