/**
 * A random-I/O load on a BlkDriver, as fio's randread/randwrite: `depth` requests always in
 * flight, each at a random block-aligned offset, until a time limit. Shared by `paravirt blk
 * bench` and bench/frontend.ts so that both measure the same thing.
 */
import { performance } from 'node:perf_hooks';
import type { BlkDriver, BlkIo } from '../devices/blk/driver.ts';
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
  if (blockSize > blk.transferLimit) throw new RangeError(`block size ${blockSize} is beyond the ${blk.transferLimit} bytes the disk takes in one request`);
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
  // `depth` operations, each started again from its own completion: no promise per request.
  const ios: BlkIo[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      let running = depth;
      let failed = false;
      const fail = (err: Error): void => {
        if (failed) return;
        failed = true;
        reject(err);
      };
      const next = (io: BlkIo): void => {
        io.sector = Math.floor(Math.random() * blocks) * blockSectors;
        try {
          blk.start(io);
        } catch (err) {
          // A request the driver refuses outright: no completion follows.
          fail(err as Error);
          if (--running === 0) resolve();
        }
      };
      for (let i = 0; i < depth; i++) {
        const io: BlkIo = {
          write: options.write === true,
          sector: 0,
          // One buffer per operation: reads land in it, writes send it.
          buffer: new Uint8Array(blockSize),
          done: (err) => {
            if (err !== undefined) fail(err);
            else ops++;
            if (failed || performance.now() >= deadline) {
              if (--running === 0) resolve();
              return;
            }
            next(io);
          },
        };
        ios.push(io);
      }
      for (const io of ios) next(io);
    });
  } finally {
    clearInterval(progress);
  }
  const elapsed = (performance.now() - start) / 1000;
  return { ops, seconds: elapsed, iops: ops / elapsed, throughput: (ops * blockSize) / elapsed };
}
