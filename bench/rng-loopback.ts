/**
 * virtio-rng over the in-process mmio loopback: small reads (16 bytes, one request each) at
 * queue depth 1 and 32, with split and packed rings. The device work is tiny, so this measures
 * the framework's per-request cost: driver request queue, ring, notify, queue server, interrupt
 * delivery and dispatch.
 */
import { report, step } from './_report.ts';
import { RngDevice } from '../src/devices/rng/device.ts';
import { RngDriver } from '../src/devices/rng/driver.ts';
import { createLoopback } from '../src/transports/mmio/loopback.ts';

const READ_BYTES = 16;
const WARMUP_MS = 500;
const MEASURE_MS = 1500;

async function run(packed: boolean, depth: number): Promise<void> {
  step(`reading over the ${packed ? 'packed' : 'split'} ring at depth ${depth}`);
  const { transport } = createLoopback(new RngDevice(), { memoryBytes: 4 << 20 });
  const rng = await RngDriver.open(transport, { packed });
  let done = 0;
  let stopAt = 0;
  const worker = async (): Promise<void> => {
    while (performance.now() < stopAt) {
      await rng.read(READ_BYTES);
      done++;
    }
  };
  const phase = async (ms: number): Promise<{ ops: number; seconds: number }> => {
    done = 0;
    const start = performance.now();
    stopAt = start + ms;
    await Promise.all(Array.from({ length: depth }, worker));
    return { ops: done, seconds: (performance.now() - start) / 1000 };
  };
  await phase(WARMUP_MS);
  const { ops, seconds } = await phase(MEASURE_MS);
  const ring = packed ? 'packed' : 'split';
  report('rng-loopback', 'requests_per_second', Math.round(ops / seconds), 'req/s', { ring, depth, readBytes: READ_BYTES });
  await rng.close();
}

export async function main(): Promise<void> {
  for (const packed of [false, true]) {
    for (const depth of [1, 32]) await run(packed, depth);
  }
}
