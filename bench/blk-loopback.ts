/**
 * virtio-blk over the in-process mmio loopback: 4 KiB random reads from an in-memory disk at
 * queue depth 32, with split and packed rings. Measures the whole stack a request crosses:
 * driver request building and DMA allocation, ring, transport notify, device parsing, backend
 * copy, completion and interrupt back to the driver. A last run reads a raw image file (in the
 * page cache) instead, to show what the thread-pool file I/O adds.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { report, step } from './_report.ts';
import type { BlockBackend } from '../src/storage/block-backend.ts';
import { BlkDevice } from '../src/devices/blk/device.ts';
import { BlkDriver } from '../src/devices/blk/driver.ts';
import { FileBackend } from '../src/storage/file-backend.ts';
import { MemoryBackend } from '../src/storage/memory-backend.ts';
import { createLoopback } from '../src/transports/mmio/loopback.ts';

const DISK_BYTES = 64 * 1024 * 1024;
const BLOCK = 4096;
const DEPTH = 32;
const WARMUP_MS = 300;
const MEASURE_MS = 2000;

async function run(backend: BlockBackend, label: string, packed: boolean): Promise<void> {
  step(`reading from the ${label === '' ? 'memory' : 'file'} back-end over the ${packed ? 'packed' : 'split'} ring`);
  const device = new BlkDevice({ backend });
  const { transport } = createLoopback(device, { memoryBytes: 16 << 20 });
  const blk = await BlkDriver.open(transport, { packed });
  const blocks = DISK_BYTES / BLOCK;
  let seed = 12345;
  // A small LCG keeps the offsets random yet the run reproducible.
  const nextSector = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return (seed % blocks) * (BLOCK / 512);
  };

  let done = 0;
  let stopAt = 0;
  const worker = async (): Promise<void> => {
    const buf = new Uint8Array(BLOCK);
    while (performance.now() < stopAt) {
      await blk.read(nextSector(), buf);
      done++;
    }
  };
  const phase = async (ms: number): Promise<{ ops: number; seconds: number; cpuSeconds: number }> => {
    done = 0;
    const start = performance.now();
    const cpu = process.cpuUsage();
    stopAt = start + ms;
    await Promise.all(Array.from({ length: DEPTH }, worker));
    const used = process.cpuUsage(cpu);
    return { ops: done, seconds: (performance.now() - start) / 1000, cpuSeconds: (used.user + used.system) / 1e6 };
  };

  await phase(WARMUP_MS);
  const { ops, seconds, cpuSeconds } = await phase(MEASURE_MS);
  await blk.close();
  const ring = `${label}${packed ? 'packed' : 'split'}`;
  const iops = ops / seconds;
  // On a shared machine wall-clock IOPS swing with the load; ops per CPU-second is the steadier
  // figure for comparing changes.
  report('blk-loopback', `read_4k_qd${DEPTH}_${ring}_iops`, Math.round(iops), 'IOPS', {
    ops,
    seconds,
    ops_per_cpu_second: Math.round(ops / cpuSeconds),
  });
  report('blk-loopback', `read_4k_qd${DEPTH}_${ring}_bandwidth`, Number(((iops * BLOCK) / 1e6).toFixed(1)), 'MB/s');
}

export async function main(): Promise<void> {
  await run(new MemoryBackend(DISK_BYTES), '', false);
  await run(new MemoryBackend(DISK_BYTES), '', true);
  const dir = await mkdtemp(join(tmpdir(), 'paravirt-bench-'));
  try {
    const path = join(dir, 'disk.img');
    await writeFile(path, new Uint8Array(DISK_BYTES).fill(1));
    const file = await FileBackend.open(path);
    try {
      await run(file, 'file_', false);
    } finally {
      await file.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
