/**
 * A random-I/O load on a BlkDriver, as fio's randread/randwrite: `depth` requests always in
 * flight, each at a random block-aligned offset, until a time limit. Shared by `paravirt blk
 * bench` and bench/frontend.ts so that both measure the same thing.
 */
import { performance } from 'node:perf_hooks';
import type { BlkDriver } from '../devices/blk/driver.ts';
import { SECTOR_SIZE } from '../devices/blk/wire.ts';

export interface WorkloadOptions {
  /** Requests in flight at once (the queue depth). */
  readonly depth: number;
  /** Bytes per request; a multiple of 512. */
  readonly blockSize: number;
  readonly seconds: number;
  /** Write instead of read. */
  readonly write?: boolean;
  /** Called about once a second with the operations done so far and the seconds elapsed. */
  readonly onProgress?: (ops: number, seconds: number) => void;
}

export interface WorkloadResult {
  readonly ops: number;
  readonly seconds: number;
  readonly iops: number;
  /** Bytes per second. */
  readonly throughput: number;
}

export async function randomIo(blk: BlkDriver, options: WorkloadOptions): Promise<WorkloadResult> {
  const { depth, blockSize, seconds } = options;
  if (!Number.isSafeInteger(blockSize) || blockSize < SECTOR_SIZE || blockSize % SECTOR_SIZE !== 0) {
    throw new RangeError(`block size ${blockSize} is not a positive multiple of ${SECTOR_SIZE}`);
  }
  const blockSectors = blockSize / SECTOR_SIZE;
  const blocks = Math.floor(blk.capacity / blockSectors);
  if (blocks < 1) throw new RangeError(`the disk of ${blk.capacity} sectors is smaller than one ${blockSize}-byte block`);
  const start = performance.now();
  const deadline = start + seconds * 1000;
  let ops = 0;
  const progress =
    options.onProgress === undefined
      ? undefined
      : setInterval(() => options.onProgress?.(ops, (performance.now() - start) / 1000), 1000);
  const worker = async (): Promise<void> => {
    // One buffer per worker: reads land in it, writes send it.
    const buffer = new Uint8Array(blockSize);
    while (performance.now() < deadline) {
      const sector = Math.floor(Math.random() * blocks) * blockSectors;
      if (options.write === true) await blk.write(sector, buffer);
      else await blk.read(sector, buffer);
      ops++;
    }
  };
  try {
    await Promise.all(Array.from({ length: depth }, worker));
  } finally {
    clearInterval(progress);
  }
  const elapsed = (performance.now() - start) / 1000;
  return { ops, seconds: elapsed, iops: ops / elapsed, throughput: (ops * blockSize) / elapsed };
}
