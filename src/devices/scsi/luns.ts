/**
 * Opening the LUNs of a `paravirt serve scsi` command line: one file backend per --lun, a disk on
 * each, placed where the spec says (target=, lun=) or else in order on target 0 at the lowest
 * free LUN number.
 */
import { FileBackend } from '../../storage/file-backend.ts';
import { IoThreads } from '../../storage/io-thread.ts';
import type { LunSpec } from './descriptor.ts';
import { ScsiDisk } from './disk.ts';
import { ScsiTargets, formatAddress } from './target.ts';
import type { LunAddress } from './wire.ts';

export interface OpenLuns {
  readonly targets: ScsiTargets;
  /** The I/O threads every LUN shares: hundreds of LUNs, one small pool. */
  readonly threads: IoThreads;
  close(): Promise<void>;
}

/** I/O threads shared by all LUNs of a controller. */
const SHARED_THREADS = 4;

/** Open one LUN's image; the serial defaults to its address, which keeps its identity stable across restarts. */
export async function openDisk(spec: LunSpec, address: LunAddress, threads: IoThreads): Promise<ScsiDisk> {
  const backend = await FileBackend.open(spec.path, { readOnly: spec.readOnly, sharedThreads: threads });
  try {
    return new ScsiDisk({ backend, readOnly: spec.readOnly, serial: spec.serial ?? `lun-${address.target}-${address.lun}` });
  } catch (err) {
    await backend.close();
    throw new Error(`--lun ${spec.path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

export async function openLuns(specs: readonly LunSpec[]): Promise<OpenLuns> {
  const targets = new ScsiTargets();
  const threads = new IoThreads(SHARED_THREADS);
  const close = async (): Promise<void> => {
    await Promise.all(targets.entries().map((e) => e.disk.storage.close()));
    await threads.close();
  };
  // Explicit addresses first, so the numbered ones fill the gaps around them.
  const placed = specs.map((s) => (s.lun !== undefined ? { target: s.target ?? 0, lun: s.lun } : undefined));
  const taken = new Set(placed.filter((a) => a !== undefined).map(formatAddress));
  let next = 0;
  try {
    for (const [i, spec] of specs.entries()) {
      let address = placed[i];
      if (address === undefined) {
        const target = spec.target ?? 0;
        while (taken.has(formatAddress({ target, lun: next }))) next++;
        address = { target, lun: next };
        taken.add(formatAddress(address));
      }
      if (targets.get(address) !== undefined) throw new Error(`--lun ${spec.path}: LUN ${formatAddress(address)} is given twice.`);
      targets.add(address, await openDisk(spec, address, threads));
    }
  } catch (err) {
    await close();
    throw err;
  }
  return { targets, threads, close };
}
