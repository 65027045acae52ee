/** Running one CDB against a target with hand-made data buffers, and reading what it answered. */
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { ChainReader, ChainWriter } from '../../../src/virtio/chain-io.ts';
import { DescriptorChain } from '../../../src/virtio/queue.ts';
import { BLOCK_SIZE, ScsiDisk, TransferOverrun } from '../../../src/devices/scsi/disk.ts';
import { CheckCondition, type SenseCode, fixedSense } from '../../../src/devices/scsi/sense.ts';
import { ScsiTargets } from '../../../src/devices/scsi/target.ts';
import type { LunAddress } from '../../../src/devices/scsi/wire.ts';

export type Outcome =
  | { readonly kind: 'good'; readonly data: Uint8Array; readonly consumed: number }
  | { readonly kind: 'check'; readonly sense: SenseCode; readonly senseBytes: Uint8Array }
  | { readonly kind: 'overrun' };

export interface RunOptions {
  /** Data-out bytes. */
  readonly out?: Uint8Array;
  /** Data-in buffer size. */
  readonly inLength?: number;
  readonly address?: LunAddress;
}

export async function run(targets: ScsiTargets, cdbBytes: readonly number[], options: RunOptions = {}): Promise<Outcome> {
  const out = options.out ?? new Uint8Array(0);
  const inBuf = new Uint8Array(options.inLength ?? 0);
  const chain = new DescriptorChain(0, 2, [out], [inBuf], out.length, inBuf.length);
  const reader = new ChainReader(chain);
  const writer = new ChainWriter(chain);
  const cdb = new Uint8Array(32);
  cdb.set(cdbBytes);
  try {
    await targets.execute(options.address ?? { target: 0, lun: 0 }, cdb, { in: writer, out: reader });
    return { kind: 'good', data: inBuf.slice(0, writer.written), consumed: out.length - reader.remaining };
  } catch (err) {
    if (err instanceof CheckCondition) return { kind: 'check', sense: err.sense, senseBytes: fixedSense(err.sense, err.field, err.information) };
    if (err instanceof TransferOverrun) return { kind: 'overrun' };
    throw err;
  }
}

/** A target with one LUN 0:0 of `blocks` blocks in memory, its power-on unit attention already reported. */
export async function oneDisk(blocks = 64, options: { readOnly?: boolean; serial?: string } = {}): Promise<{ targets: ScsiTargets; backend: MemoryBackend; disk: ScsiDisk }> {
  const backend = new MemoryBackend(blocks * BLOCK_SIZE);
  const disk = new ScsiDisk({ backend, readOnly: options.readOnly, serial: options.serial ?? 'test-serial' });
  const targets = new ScsiTargets();
  targets.add({ target: 0, lun: 0 }, disk);
  await run(targets, [0x00]); // TEST UNIT READY: takes the power-on 29/00
  return { targets, backend, disk };
}

export function be32(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(at);
}
