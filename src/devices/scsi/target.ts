/**
 * The SCSI targets behind the controller and the LUNs on each (SAM-5 §4.6): addressing a command
 * to a LUN, REPORT LUNS, and what a target answers for a LUN it does not have (SPC-5 §4.6.3:
 * INQUIRY with peripheral qualifier 011b, REQUEST SENSE and every other command with LOGICAL UNIT
 * NOT SUPPORTED). A target exists while it has at least one LUN; a command for any other target
 * never reaches here (the device answers VIRTIO_SCSI_S_BAD_TARGET, §5.6.6.1).
 */
import { Op, be32, checkCdb, putBe32 } from './cdb.ts';
import { type CommandData, type ScsiDisk, sendData } from './disk.ts';
import { absentLunInquiry } from './inquiry.ts';
import { CheckCondition, Sense, fixedSense, invalidField } from './sense.ts';
import { LUN_FIELD_SIZE, type LunAddress, MAX_LUN, MAX_TARGET, reportedLun } from './wire.ts';

function key(a: LunAddress): number {
  return a.target * (MAX_LUN + 1) + a.lun;
}

export function formatAddress(a: LunAddress): string {
  return `${a.target}:${a.lun}`;
}

export class ScsiTargets {
  private readonly luns = new Map<number, { address: LunAddress; disk: ScsiDisk }>();

  /** Every LUN, in target then LUN order. */
  entries(): { address: LunAddress; disk: ScsiDisk }[] {
    return [...this.luns.entries()].sort(([a], [b]) => a - b).map(([, v]) => v);
  }

  get size(): number {
    return this.luns.size;
  }

  get(address: LunAddress): ScsiDisk | undefined {
    return this.luns.get(key(address))?.disk;
  }

  hasTarget(target: number): boolean {
    for (const { address } of this.luns.values()) if (address.target === target) return true;
    return false;
  }

  /** LUN numbers of `target`, ascending. */
  lunsOf(target: number): number[] {
    return this.entries()
      .filter((e) => e.address.target === target)
      .map((e) => e.address.lun);
  }

  /**
   * Attach `disk` at `address`. The other LUNs of the target report REPORTED LUNS DATA HAS
   * CHANGED (SPC-5 §6.33) to their next command.
   */
  add(address: LunAddress, disk: ScsiDisk): void {
    if (!Number.isInteger(address.target) || address.target < 0 || address.target > MAX_TARGET) {
      throw new RangeError(`SCSI target ${address.target} is not from 0 to ${MAX_TARGET}`);
    }
    if (!Number.isInteger(address.lun) || address.lun < 0 || address.lun > MAX_LUN) {
      throw new RangeError(`SCSI LUN ${address.lun} is not from 0 to ${MAX_LUN}`);
    }
    if (this.luns.has(key(address))) throw new RangeError(`SCSI LUN ${formatAddress(address)} is already attached`);
    this.lunsChanged(address.target);
    this.luns.set(key(address), { address, disk });
  }

  /** Detach the LUN at `address` and return its disk. */
  remove(address: LunAddress): ScsiDisk {
    const entry = this.luns.get(key(address));
    if (entry === undefined) throw new RangeError(`no SCSI LUN ${formatAddress(address)} is attached`);
    this.luns.delete(key(address));
    this.lunsChanged(address.target);
    return entry.disk;
  }

  private lunsChanged(target: number): void {
    for (const e of this.luns.values()) if (e.address.target === target) e.disk.attention(Sense.REPORTED_LUNS_CHANGED);
  }

  /**
   * Execute one command for `address` on an existing target. Resolves on GOOD; rejects with
   * CheckCondition or TransferOverrun.
   */
  async execute(address: LunAddress, cdb: Uint8Array, data: CommandData): Promise<void> {
    const disk = this.get(address);
    if (cdb.length > 0 && cdb[0] === Op.REPORT_LUNS) {
      checkCdb(cdb);
      this.reportLuns(address.target, cdb, data);
      return;
    }
    if (disk !== undefined) return disk.execute(cdb, data);
    const command = checkCdb(cdb);
    switch (command.opcode) {
      case Op.INQUIRY: {
        // SPC-5 §6.7.2: standard data with qualifier 011b; VPD pages of an absent LUN are refused.
        if ((cdb[1] & 0x01) !== 0 || cdb[2] !== 0) throw invalidField(1, 0);
        sendData(data, absentLunInquiry(), (cdb[3] << 8) | cdb[4]);
        return;
      }
      case Op.REQUEST_SENSE: {
        sendData(data, fixedSense(Sense.LUN_NOT_SUPPORTED), cdb[4]);
        return;
      }
      default:
        throw new CheckCondition(Sense.LUN_NOT_SUPPORTED);
    }
  }

  /** REPORT LUNS (SPC-5 §6.33): SELECT REPORT 00h and 02h list every LUN of the target; 01h (well-known only) none. */
  private reportLuns(target: number, cdb: Uint8Array, data: CommandData): void {
    const select = cdb[2];
    if (select !== 0x00 && select !== 0x01 && select !== 0x02) throw invalidField(2);
    const allocation = be32(cdb, 6);
    // SPC-5 §6.33: an allocation length below 16 is refused.
    if (allocation < 16) throw invalidField(6);
    const luns = select === 0x01 ? [] : this.lunsOf(target);
    const out = new Uint8Array(8 + luns.length * LUN_FIELD_SIZE);
    putBe32(out, 0, luns.length * LUN_FIELD_SIZE);
    luns.forEach((lun, i) => reportedLun(lun, out, 8 + i * LUN_FIELD_SIZE));
    sendData(data, out, allocation);
  }
}
