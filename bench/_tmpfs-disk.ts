/**
 * The disk the blk benchmarks read: a raw image on tmpfs (/dev/shm), written rather than sparse
 * so that every read finds real pages, in a directory of its own that also takes the benchmark's
 * sockets; and qemu-storage-daemon exporting it read-only over vhost-user-blk, the peer they
 * compare with.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { step } from './_report.ts';
import { type StorageDaemon, startStorageDaemon } from '../test/lab/qsd.ts';

export interface TmpfsDisk {
  /** The directory holding the image; sockets go here too. */
  readonly dir: string;
  readonly image: string;
  /** Remove the directory and everything in it. */
  remove(): void;
}

/** A `bytes`-byte image filled with 0xa5 in a new directory /dev/shm/`prefix`XXXXXX. */
export function tmpfsDisk(prefix: string, bytes: number): TmpfsDisk {
  const dir = mkdtempSync(`/dev/shm/${prefix}`);
  const image = join(dir, 'disk.img');
  try {
    writeFileSync(image, new Uint8Array(bytes).fill(0xa5));
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return { dir, image, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The host's qemu-storage-daemon serving `disk` read-only on one queue, at `dir`/qsd.sock. */
export function readOnlyStorageDaemon(disk: TmpfsDisk): Promise<StorageDaemon> {
  step('starting qemu-storage-daemon');
  return startStorageDaemon({ image: disk.image, socketPath: join(disk.dir, 'qsd.sock'), numQueues: 1, writable: false, qemu: 'system' });
}
