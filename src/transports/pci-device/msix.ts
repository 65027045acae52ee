/**
 * The MSI-X capability of a function, device side (PCI 3.0 §6.8.2): Message Control, the table
 * and PBA locations, and the table and PBA bytes themselves in a BAR.
 *
 * A VMM client (QEMU's vfio-pci) emulates the table and PBA in front of the device and delivers
 * each vector through an eventfd, doing the per-vector masking itself; the function still keeps
 * the bytes so a client that reads them sees well-formed registers (every vector masked at reset,
 * as §6.8.2.9 requires, and nothing pending).
 */
import { CapabilityId } from '../pci/capabilities.ts';
import type { BarHandler, CapabilitySpec } from './function.ts';

/** Message Control bits (§6.8.2.3). */
const CONTROL_ENABLE = 0x8000;
const CONTROL_FUNCTION_MASK = 0x4000;
/** Offsets from the capability's id byte. */
export const MsixCap = { CONTROL: 2, TABLE: 4, PBA: 8 } as const;
const ENTRY_SIZE = 16;
const VECTOR_CONTROL = 12;
const VECTOR_MASKED = 1;
const MAX_VECTORS = 2048;

/** "No vector" in virtio's MSI-X vector registers (§4.1.4.3). */
export const NO_VECTOR = 0xffff;

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

export class MsixLayout {
  /** Table at offset 0 of `bar`, PBA after it on its own 2 KiB boundary. */
  readonly pbaOffset: number;
  readonly barSize: number;

  constructor(
    readonly vectors: number,
    readonly bar: number,
  ) {
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > MAX_VECTORS) throw new RangeError(`MSI-X vector count ${vectors} is outside 1..${MAX_VECTORS}`);
    this.pbaOffset = roundUp(vectors * ENTRY_SIZE, 0x800);
    const end = this.pbaOffset + roundUp(vectors, 64) / 8;
    this.barSize = Math.max(0x1000, 2 ** Math.ceil(Math.log2(end)));
  }

  /** The capability: table size N-1, table and PBA in `bar`; only Enable and Function Mask are writable. */
  capability(): CapabilitySpec {
    const body = new Uint8Array(10);
    const v = new DataView(body.buffer);
    v.setUint16(MsixCap.CONTROL - 2, this.vectors - 1, true);
    v.setUint32(MsixCap.TABLE - 2, this.bar, true);
    v.setUint32(MsixCap.PBA - 2, this.pbaOffset | this.bar, true);
    const writable = new Uint8Array(10);
    writable[1] = (CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >>> 8;
    return { id: CapabilityId.MSIX, body, writable };
  }
}

/** Whether Message Control (read from configuration space) has MSI-X enabled. */
export function msixEnabled(control: number): boolean {
  return (control & CONTROL_ENABLE) !== 0;
}

/** The table and PBA bytes, served as one BAR. */
export class MsixTable implements BarHandler {
  readonly size: number;
  private readonly bytes: Uint8Array;

  constructor(private readonly layout: MsixLayout) {
    this.size = layout.barSize;
    this.bytes = new Uint8Array(layout.barSize);
    this.reset();
  }

  reset(): void {
    this.bytes.fill(0);
    for (let i = 0; i < this.layout.vectors; i++) this.bytes[i * ENTRY_SIZE + VECTOR_CONTROL] = VECTOR_MASKED;
  }

  read(offset: number, data: Uint8Array): void {
    data.set(this.bytes.subarray(offset, offset + data.length));
  }

  /** Table entries are writable; the PBA is read-only (§6.8.2.10). */
  write(offset: number, data: Uint8Array): void {
    const tableEnd = this.layout.vectors * ENTRY_SIZE;
    const end = Math.min(offset + data.length, tableEnd);
    if (offset < end) this.bytes.set(data.subarray(0, end - offset), offset);
  }
}
