/**
 * INQUIRY data of a disk LUN (SPC-5 §6.7): the standard data and the vital product data pages
 * the target offers — supported pages (00h), unit serial number (80h), device identification
 * (83h), and SBC-4's block limits (B0h), block device characteristics (B1h) and logical block
 * provisioning (B2h).
 */
import { createHash } from 'node:crypto';
import { putBe16, putBe32, putBe64 } from './cdb.ts';
import { invalidField } from './sense.ts';

/** Peripheral device type of a disk (SPC-5 Table 148): direct access block device. */
const DIRECT_ACCESS = 0x00;
/** Peripheral qualifier 011b with type 1Fh: "no logical unit here" (SPC-5 §6.7.2). */
export const NO_LUN_INQUIRY_BYTE0 = 0x7f;

const VENDOR = 'PARAVIRT';
const PRODUCT = 'virtio-scsi disk';
const REVISION = '1.0';

/** What a disk's identity and limits are, as INQUIRY reports them. */
export interface DiskIdentity {
  readonly serial: string;
  /** The NAA designator's 8 bytes (stable for a given serial). */
  readonly naa: Uint8Array;
  readonly blocks: number;
  /** Most blocks one READ or WRITE may move (B0h MAXIMUM TRANSFER LENGTH). */
  readonly maxTransferBlocks: number;
  /** Most blocks one UNMAP descriptor or WRITE SAME may cover, and descriptors per UNMAP. */
  readonly maxUnmapBlocks: number;
  readonly maxUnmapDescriptors: number;
  /** Writable and able to unmap: logical block provisioning is offered. */
  readonly provisioning: boolean;
}

function ascii(out: Uint8Array, at: number, width: number, text: string): void {
  out.fill(0x20, at, at + width);
  out.set(new TextEncoder().encode(text.slice(0, width)), at);
}

/**
 * A stable NAA designator for a serial: NAA 3 (locally assigned, SPC-5 §7.7.6.6.2) with 60 bits
 * from a hash of the serial, so the same LUN keeps its /dev/disk/by-id name across restarts.
 */
export function naaFor(serial: string): Uint8Array {
  const id = createHash('sha256').update(`paravirt-scsi:${serial}`).digest().subarray(0, 8);
  const out = new Uint8Array(id);
  out[0] = 0x30 | (out[0] & 0x0f);
  return out;
}

/** Standard INQUIRY data (SPC-5 §6.7.2), 36 bytes. */
export function standardInquiry(): Uint8Array {
  const out = new Uint8Array(36);
  out[0] = DIRECT_ACCESS;
  out[2] = 0x07; // VERSION: SPC-5
  out[3] = 0x12; // HISUP (hierarchical LUN addressing), RESPONSE DATA FORMAT 2
  out[4] = out.length - 5;
  out[7] = 0x02; // CMDQUE: tasks are queued, many in flight at once
  ascii(out, 8, 8, VENDOR);
  ascii(out, 16, 16, PRODUCT);
  ascii(out, 32, 4, REVISION);
  return out;
}

/** Standard INQUIRY data for a LUN that does not exist on an existing target. */
export function absentLunInquiry(): Uint8Array {
  const out = standardInquiry();
  out[0] = NO_LUN_INQUIRY_BYTE0;
  return out;
}

export const VpdPage = {
  SUPPORTED: 0x00,
  SERIAL: 0x80,
  DEVICE_ID: 0x83,
  BLOCK_LIMITS: 0xb0,
  CHARACTERISTICS: 0xb1,
  PROVISIONING: 0xb2,
} as const;

const PAGES = [VpdPage.SUPPORTED, VpdPage.SERIAL, VpdPage.DEVICE_ID, VpdPage.BLOCK_LIMITS, VpdPage.CHARACTERISTICS, VpdPage.PROVISIONING];

/** A VPD page: 4-byte header (type, page code, 16-bit page length) and `body`. */
function page(code: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + body.length);
  out[0] = DIRECT_ACCESS;
  out[1] = code;
  putBe16(out, 2, body.length);
  out.set(body, 4);
  return out;
}

/** Device identification designators (SPC-5 §7.7.6): NAA and T10 vendor ID, both of the LUN. */
function deviceIdentification(id: DiskIdentity): Uint8Array {
  const naa = new Uint8Array(4 + 8);
  naa[0] = 0x01; // code set: binary
  naa[1] = 0x03; // association: logical unit; designator type: NAA
  naa[3] = 8;
  naa.set(id.naa, 4);
  const t10Text = new TextEncoder().encode(`${VENDOR}${id.serial}`);
  const t10 = new Uint8Array(4 + t10Text.length);
  t10[0] = 0x02; // code set: ASCII
  t10[1] = 0x01; // association: logical unit; designator type: T10 vendor ID
  t10[3] = t10Text.length;
  t10.set(t10Text, 4);
  const body = new Uint8Array(naa.length + t10.length);
  body.set(naa);
  body.set(t10, naa.length);
  return body;
}

/** Block limits (SBC-4 §6.6.4). */
function blockLimits(id: DiskIdentity): Uint8Array {
  const body = new Uint8Array(0x3c);
  // Offsets below are from the page start; the body begins at byte 4.
  body[4 - 4] = 0x01; // WSNZ: WRITE SAME with a zero block count is refused, never "to the end"
  putBe16(body, 6 - 4, 1); // OPTIMAL TRANSFER LENGTH GRANULARITY
  putBe32(body, 8 - 4, id.maxTransferBlocks);
  if (id.provisioning) {
    putBe32(body, 20 - 4, id.maxUnmapBlocks);
    putBe32(body, 24 - 4, id.maxUnmapDescriptors);
    putBe32(body, 28 - 4, 1); // OPTIMAL UNMAP GRANULARITY
    putBe64(body, 36 - 4, id.maxUnmapBlocks); // MAXIMUM WRITE SAME LENGTH
  }
  return body;
}

/** Block device characteristics (SBC-4 §6.6.2): a non-rotating medium. */
function characteristics(): Uint8Array {
  const body = new Uint8Array(0x3c);
  putBe16(body, 0, 1); // MEDIUM ROTATION RATE: non-rotating
  return body;
}

/**
 * Logical block provisioning (SBC-4 §6.6.5): UNMAP and WRITE SAME(10/16) with UNMAP deallocate,
 * and deallocated blocks read back zero (LBPRZ 001b), which is what a punched hole does.
 */
function provisioning(id: DiskIdentity): Uint8Array {
  const body = new Uint8Array(4);
  if (id.provisioning) {
    body[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ=001b
    body[2] = 0x02; // PROVISIONING TYPE: thin provisioned
  }
  return body;
}

/** The VPD page `code`, or INVALID FIELD IN CDB pointing at the page code (SPC-5 §6.7.1). */
export function vpdPage(code: number, id: DiskIdentity): Uint8Array {
  switch (code) {
    case VpdPage.SUPPORTED:
      return page(code, Uint8Array.from(PAGES));
    case VpdPage.SERIAL:
      return page(code, new TextEncoder().encode(id.serial));
    case VpdPage.DEVICE_ID:
      return page(code, deviceIdentification(id));
    case VpdPage.BLOCK_LIMITS:
      return page(code, blockLimits(id));
    case VpdPage.CHARACTERISTICS:
      return page(code, characteristics());
    case VpdPage.PROVISIONING:
      return page(code, provisioning(id));
    default:
      throw invalidField(2);
  }
}
