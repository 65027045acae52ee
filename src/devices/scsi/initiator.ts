/**
 * A small SCSI initiator over the virtio-scsi driver: it scans the targets (REPORT LUNS, INQUIRY),
 * sizes each disk (READ CAPACITY(16)) and offers every LUN the block API of the blk driver —
 * read, write, flush, discard, write-zeroes in 512-byte sectors — as READ(16), WRITE(16),
 * SYNCHRONIZE CACHE(10), UNMAP and WRITE SAME(16). Failures are typed: ScsiTransportError for a
 * virtio response other than OK, ScsiCheckCondition with decoded sense for CHECK CONDITION.
 * Unit attentions (SAM-5 §5.14) are retried, re-reading the capacity after 2A/09. Hot-plug events
 * (§5.6.6.3) add and remove LUNs and tell the listeners.
 */
import type { Logger } from 'pino';
import type { DriverTransport } from '../../virtio/driver.ts';
import { Op, ServiceAction, be32, be64, putBe16, putBe32, putBe64 } from './cdb.ts';
import { type CommandOptions, type CommandResult, ScsiDriver, type ScsiDriverOptions } from './driver.ts';
import { type DecodedSense, SenseKey, Status, decodeSense } from './sense.ts';
import { EVENTS_MISSED, EventType, type LunAddress, ResetReason, Response, decodeLun } from './wire.ts';

const SECTOR_SIZE = 512;
/** Unit attentions a command may meet in a row before the initiator gives up. */
const UA_RETRIES = 4;
/** Largest transfer per READ or WRITE (256 KiB). */
const MAX_TRANSFER = 256 * 1024;

const RESPONSE_NAMES: Readonly<Record<number, string>> = Object.fromEntries(Object.entries(Response).map(([k, v]) => [v, k]));

/** The command never reached a status: the device answered a virtio response other than OK (§5.6.6.1). */
export class ScsiTransportError extends Error {
  constructor(
    readonly command: string,
    readonly response: number,
  ) {
    super(`scsi: ${command}: ${RESPONSE_NAMES[response] ?? `response ${response}`}`);
    this.name = 'ScsiTransportError';
  }
}

/** CHECK CONDITION (or another non-GOOD status) with what the sense data says. */
export class ScsiCheckCondition extends Error {
  constructor(
    readonly command: string,
    readonly status: number,
    readonly sense: DecodedSense | undefined,
  ) {
    const s = sense === undefined ? 'no sense data' : `sense key ${sense.key.toString(16)}h, ASC/ASCQ ${hex(sense.asc)}/${hex(sense.ascq)}`;
    super(`scsi: ${command}: status ${hex(status)}h, ${s}`);
    this.name = 'ScsiCheckCondition';
  }

  get key(): number | undefined {
    return this.sense?.key;
  }
}

function hex(n: number): string {
  return n.toString(16).padStart(2, '0');
}

function check(command: string, r: CommandResult): CommandResult {
  if (r.response !== Response.OK) throw new ScsiTransportError(command, r.response);
  if (r.status !== Status.GOOD) throw new ScsiCheckCondition(command, r.status, decodeSense(r.sense));
  return r;
}

/** What INQUIRY said of a LUN. */
export interface LunIdentity {
  readonly vendor: string;
  readonly product: string;
  readonly deviceType: number;
}

const ascii = (b: Uint8Array): string => new TextDecoder('latin1').decode(b).trim();

/** One disk LUN: the blk driver's block API in 512-byte sectors. */
export class ScsiLun {
  private blockSize = SECTOR_SIZE;
  private blocks = 0;
  private writeProtected = false;

  constructor(
    private readonly initiator: ScsiInitiator,
    readonly address: LunAddress,
    readonly identity: LunIdentity,
  ) {}

  /** Disk size in 512-byte sectors. */
  get capacity(): number {
    return (this.blocks * this.blockSize) / SECTOR_SIZE;
  }

  get readOnly(): boolean {
    return this.writeProtected;
  }

  /** Send a CDB to this LUN, retrying unit attentions; throws the typed errors. */
  async command(name: string, cdb: number[] | Uint8Array, options: CommandOptions = {}): Promise<CommandResult> {
    for (let attempt = 0; ; attempt++) {
      const r = await this.initiator.driver.command(this.address, Uint8Array.from(cdb), options);
      const sense = r.response === Response.OK && r.status === Status.CHECK_CONDITION ? decodeSense(r.sense) : undefined;
      if (sense?.key === SenseKey.UNIT_ATTENTION && attempt < UA_RETRIES) {
        // 2A/09: the capacity changed; read it again before going on.
        if (sense.asc === 0x2a && sense.ascq === 0x09 && cdb[0] !== Op.SERVICE_ACTION_IN_16) await this.refresh();
        continue;
      }
      return check(name, r);
    }
  }

  /** READ CAPACITY(16) and the write-protect bit of MODE SENSE(10). */
  async refresh(): Promise<void> {
    const cap = new Uint8Array(16);
    cap[0] = Op.SERVICE_ACTION_IN_16;
    cap[1] = ServiceAction.READ_CAPACITY_16;
    putBe32(cap, 10, 32);
    const r = await this.command('READ CAPACITY(16)', cap, { dataInLength: 32 });
    if (r.dataIn.length < 12) throw new Error(`scsi: READ CAPACITY(16) returned ${r.dataIn.length} bytes`);
    const blockSize = be32(r.dataIn, 8);
    if (blockSize < SECTOR_SIZE || blockSize % SECTOR_SIZE !== 0) throw new Error(`scsi: LUN ${this.address.target}:${this.address.lun} has ${blockSize}-byte blocks, not a multiple of 512`);
    this.blockSize = blockSize;
    this.blocks = be64(r.dataIn, 0) + 1;
    const mode = await this.command('MODE SENSE(10)', [Op.MODE_SENSE_10, 0x08, 0x3f, 0, 0, 0, 0, 0, 255, 0], { dataInLength: 255 });
    this.writeProtected = mode.dataIn.length >= 4 && (mode.dataIn[3] & 0x80) !== 0;
  }

  private range(what: string, sector: number, bytes: number): { lba: number; blocks: number } {
    const perBlock = this.blockSize / SECTOR_SIZE;
    if (bytes % this.blockSize !== 0 || sector % perBlock !== 0) throw new RangeError(`scsi: ${what} at sector ${sector} of ${bytes} bytes is not whole ${this.blockSize}-byte blocks`);
    if (!Number.isSafeInteger(sector) || sector < 0 || sector * SECTOR_SIZE + bytes > this.capacity * SECTOR_SIZE) {
      throw new RangeError(`scsi: ${what} of ${bytes} bytes at sector ${sector} is past the end (${this.capacity} sectors)`);
    }
    return { lba: sector / perBlock, blocks: bytes / this.blockSize };
  }

  private rw(op: number, lba: number, blocks: number): Uint8Array {
    const cdb = new Uint8Array(16);
    cdb[0] = op;
    putBe64(cdb, 2, lba);
    putBe32(cdb, 10, blocks);
    return cdb;
  }

  /** Read `length` bytes (or fill `buffer`) from `sector` on. */
  async read(sector: number, lengthOrBuffer: number | Uint8Array): Promise<Uint8Array> {
    const out = typeof lengthOrBuffer === 'number' ? new Uint8Array(lengthOrBuffer) : lengthOrBuffer;
    const { lba } = this.range('read', sector, out.length);
    const parts: Promise<void>[] = [];
    for (let at = 0; at < out.length; at += MAX_TRANSFER) {
      const len = Math.min(MAX_TRANSFER, out.length - at);
      const first = lba + at / this.blockSize;
      parts.push(
        this.command('READ(16)', this.rw(Op.READ_16, first, len / this.blockSize), { dataInLength: len }).then((r) => {
          if (r.dataIn.length !== len) throw new Error(`scsi: READ(16) of ${len} bytes transferred ${r.dataIn.length}`);
          out.set(r.dataIn, at);
        }),
      );
    }
    await Promise.all(parts);
    return out;
  }

  /** Write `data` from `sector` on. */
  async write(sector: number, data: Uint8Array): Promise<void> {
    const { lba } = this.range('write', sector, data.length);
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < data.length; at += MAX_TRANSFER) {
      const len = Math.min(MAX_TRANSFER, data.length - at);
      parts.push(this.command('WRITE(16)', this.rw(Op.WRITE_16, lba + at / this.blockSize, len / this.blockSize), { dataOut: data.subarray(at, at + len) }));
    }
    await Promise.all(parts);
  }

  /**
   * SYNCHRONIZE CACHE(10) of the whole disk (LBA 0, count 0: to the end). The 10-byte form is
   * what every target implements (QEMU's scsi-hd has no SYNCHRONIZE CACHE(16)), and it covers any
   * disk since a count of 0 reaches the last block (SBC-4 §5.28).
   */
  async flush(): Promise<void> {
    await this.command('SYNCHRONIZE CACHE(10)', [Op.SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  }

  /** UNMAP `count` sectors from `sector`. */
  async discard(sector: number, count: number): Promise<void> {
    const { lba, blocks } = this.range('discard', sector, count * SECTOR_SIZE);
    const list = new Uint8Array(24);
    putBe16(list, 0, 22);
    putBe16(list, 2, 16);
    putBe64(list, 8, lba);
    putBe32(list, 16, blocks);
    await this.command('UNMAP', [Op.UNMAP, 0, 0, 0, 0, 0, 0, 0, list.length, 0], { dataOut: list });
  }

  /** WRITE SAME(16) of a zero block over `count` sectors; `unmap` lets the target deallocate them. */
  async writeZeroes(sector: number, count: number, unmap = false): Promise<void> {
    const { lba, blocks } = this.range('write zeroes', sector, count * SECTOR_SIZE);
    const cdb = this.rw(Op.WRITE_SAME_16, lba, blocks);
    if (unmap) cdb[1] |= 0x08;
    await this.command('WRITE SAME(16)', cdb, { dataOut: new Uint8Array(this.blockSize) });
  }
}

export interface InitiatorOptions extends ScsiDriverOptions {
  /** Highest target to scan (default: max_target, at most 255). */
  readonly maxTarget?: number;
  readonly log?: Logger;
}

export class ScsiInitiator {
  readonly luns = new Map<string, ScsiLun>();
  private readonly added: ((lun: ScsiLun) => void)[] = [];
  private readonly removed: ((address: LunAddress) => void)[] = [];
  private readonly changed: ((lun: ScsiLun) => void)[] = [];

  private constructor(
    readonly driver: ScsiDriver,
    private readonly maxTarget: number,
  ) {
    driver.onEvent((e) => void this.event(e.event, e.lun, e.reason));
  }

  /** Open the controller behind `transport` and scan it. */
  static async open(transport: DriverTransport, options: InitiatorOptions = {}): Promise<ScsiInitiator> {
    const driver = await ScsiDriver.open(transport, options);
    try {
      const initiator = new ScsiInitiator(driver, Math.min(options.maxTarget ?? driver.config.maxTarget, 255));
      await initiator.scan();
      return initiator;
    } catch (err) {
      await driver.close();
      throw err;
    }
  }

  onLunAdded(listener: (lun: ScsiLun) => void): void {
    this.added.push(listener);
  }

  onLunRemoved(listener: (address: LunAddress) => void): void {
    this.removed.push(listener);
  }

  /** A PARAM_CHANGE event made the initiator re-read a LUN's capacity. */
  onLunChanged(listener: (lun: ScsiLun) => void): void {
    this.changed.push(listener);
  }

  /** LUNs found, in target then LUN order. */
  list(): ScsiLun[] {
    return [...this.luns.values()].sort((a, b) => a.address.target - b.address.target || a.address.lun - b.address.lun);
  }

  /** REPORT LUNS on LUN 0 of every target; a target that is not there answers BAD_TARGET. */
  async scan(): Promise<void> {
    for (let target = 0; target <= this.maxTarget; target++) {
      const r = await this.driver.command({ target, lun: 0 }, Uint8Array.of(Op.REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0), { dataInLength: 4096 });
      if (r.response === Response.BAD_TARGET) continue;
      const data = check(`REPORT LUNS of target ${target}`, r).dataIn;
      const count = Math.min(be32(data, 0), data.length - 8) / 8;
      for (let i = 0; i < count; i++) {
        const at = 8 + i * 8;
        // Single-level LUNs (SAM-5 §4.7.4): peripheral or flat space in the first two bytes.
        const method = data[at] >> 6;
        if (method > 1) continue;
        await this.probe({ target, lun: ((data[at] & 0x3f) << 8) | data[at + 1] });
      }
    }
  }

  /** INQUIRY and, for a disk, its capacity; adds it to `luns`. */
  private async probe(address: LunAddress): Promise<ScsiLun | undefined> {
    const r = await this.driver.command(address, Uint8Array.of(Op.INQUIRY, 0, 0, 0, 36, 0), { dataInLength: 36 });
    if (r.response !== Response.OK || r.status !== Status.GOOD || r.dataIn.length < 36) return undefined;
    const data = r.dataIn;
    // Peripheral qualifier 000b and a direct access block device only.
    if (data[0] !== 0x00) return undefined;
    const lun = new ScsiLun(this, address, { vendor: ascii(data.subarray(8, 16)), product: ascii(data.subarray(16, 32)), deviceType: data[0] & 0x1f });
    await lun.refresh();
    this.luns.set(`${address.target}:${address.lun}`, lun);
    return lun;
  }

  /** §5.6.6.3: TRANSPORT_RESET with RESCAN adds a LUN, REMOVED drops it; missed events rescan all. */
  private async event(event: number, lunField: Uint8Array, reason: number): Promise<void> {
    if ((event & EVENTS_MISSED) !== 0) {
      await this.scan().catch(() => undefined);
      return;
    }
    const address = decodeLun(lunField);
    if (address === undefined) return;
    const key = `${address.target}:${address.lun}`;
    if (event === EventType.TRANSPORT_RESET && reason === ResetReason.RESCAN) {
      const lun = await this.probe(address).catch(() => undefined);
      if (lun !== undefined) for (const l of this.added) l(lun);
    } else if (event === EventType.TRANSPORT_RESET && reason === ResetReason.REMOVED) {
      if (this.luns.delete(key)) for (const l of this.removed) l(address);
    } else if (event === EventType.PARAM_CHANGE) {
      const lun = this.luns.get(key);
      if (lun === undefined) return;
      await lun.refresh().catch(() => undefined);
      for (const l of this.changed) l(lun);
    }
  }

  async close(): Promise<void> {
    await this.driver.close();
  }
}
