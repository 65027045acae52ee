/**
 * Virtqueue microbenchmark on one core: both sides of a queue in one thread, moving
 * one-descriptor chains in batches of 32 (the driver adds 32 and kicks, the device pops 32,
 * pushes them and publishes, the driver collects 32). Reports chains per second per ring layout,
 * twice: with each buffer always in the same ring slot (a driver with fixed buffers per slot, the
 * headline figure), and with buffers moving from slot to slot (`_moving_buffers`), where the
 * device finds a different buffer in a slot each time.
 *
 * Each layout runs in a process of its own. A device process serves its queues with one ring
 * layout (VIRTIO_F_RING_PACKED is negotiated per device, and in practice the same for all of a
 * front-end's devices), so its call sites see one queue class; measuring the second layout in a
 * process that already ran the first would measure the loop below made polymorphic, which
 * cost the packed figures up to a third of their rate (see docs/performance.md).
 *
 * For instruction counts under valgrind, which are repeatable whatever the machine's load:
 * PARAVIRT_BENCH_RING_LAYOUT=split|packed runs one layout in this process, and with
 * PARAVIRT_BENCH_RING_BATCHES=N it moves exactly N batches after the warm-up instead of timing
 * rounds (count two N and divide the difference by the chains).
 */
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { report, step } from './_report.ts';
import { GuestMemory } from '../src/virtio/memory.ts';
import type { DeviceQueue, DriverQueue, QueueConfig, Segment } from '../src/virtio/queue.ts';
import { PackedDeviceQueue, PackedDriverQueue, packedRingLayout } from '../src/virtio/packed-ring.ts';
import {
  SplitDeviceQueue,
  SplitDriverQueue,
  placeRingAreas,
  splitRingLayout,
  type SplitRingLayout,
} from '../src/virtio/split-ring.ts';

const SIZE = 256;
const BATCH = 32;
const BUFFER_BYTES = 64;
/** CPU milliseconds per round, and rounds per ring layout (fewer for moving buffers). */
const ROUND_MS = 150;
const ROUNDS = 20;
const MOVING_ROUNDS = 10;
/** Batches per call of run() in the timed rounds, and calls of it to warm up. */
const CALL_BATCHES = 100;
const WARM_UP_CALLS = 200;
const LAYOUT_ENV = 'PARAVIRT_BENCH_RING_LAYOUT';
const BATCHES_ENV = 'PARAVIRT_BENCH_RING_BATCHES';

type Layout = (size: number) => SplitRingLayout;
type MakeDevice = (memory: GuestMemory, config: QueueConfig, name: string) => DeviceQueue;
type MakeDriver = (memory: GuestMemory, config: QueueConfig, name: string) => DriverQueue<number>;

/** The ring layouts measured. */
const RINGS: Record<string, [layout: Layout, makeDevice: MakeDevice, makeDriver: MakeDriver]> = {
  split: [splitRingLayout, (m, c, n) => new SplitDeviceQueue(m, c, n), (m, c, n) => new SplitDriverQueue<number>(m, c, n)],
  packed: [packedRingLayout, (m, c, n) => new PackedDeviceQueue(m, c, n), (m, c, n) => new PackedDriverQueue<number>(m, c, n)],
};

/**
 * Move `batches` batches through the queue; returns the chains moved. With `moving`, each batch
 * starts one buffer further along `buffers` (BATCH + 1 of them), so no ring slot sees the same
 * buffer twice in a row.
 */
function run(dev: DeviceQueue, drv: DriverQueue<number>, buffers: readonly Segment[][], batches: number, moving: boolean): number {
  const none: Segment[] = [];
  for (let b = 0; b < batches; b++) {
    const shift = moving ? b : 0;
    for (let i = 0; i < BATCH; i++) drv.add(none, buffers[(i + shift) % buffers.length], i);
    drv.kick();
    for (let i = 0; i < BATCH; i++) {
      const chain = dev.pop();
      if (chain === null) throw new Error('ring benchmark: the device found fewer chains than were added');
      dev.push(chain, BUFFER_BYTES);
    }
    dev.publish();
    for (let i = 0; i < BATCH; i++) {
      if (drv.getUsed() === null) throw new Error('ring benchmark: the driver got back fewer chains than were used');
    }
  }
  return batches * BATCH;
}

/** Measure one layout in this process, fixed buffers then moving ones. */
function measure(name: string): void {
  const ring = RINGS[name];
  if (ring === undefined) throw new Error(`${LAYOUT_ENV}=${name} names no ring layout (split or packed)`);
  const [layout, makeDevice, makeDriver] = ring;
  const fixedBatches = process.env[BATCHES_ENV];
  for (const moving of [false, true]) {
    step(`running the ${name} ring${moving ? ' with moving buffers' : ''}`);
    const memory = GuestMemory.allocate(1 << 20);
    const at = placeRingAreas(layout(SIZE), 0x1000);
    const config: QueueConfig = { ...at, size: SIZE, eventIdx: true, indirect: false, inOrder: false };
    const drv = makeDriver(memory, config, `${name}-bench`);
    const dev = makeDevice(memory, config, `${name}-bench`);
    const buffers = Array.from({ length: BATCH + 1 }, (_, i) => [{ addr: at.end + i * BUFFER_BYTES, len: BUFFER_BYTES }]);
    // Warm up with the calls the rounds make, so that run() is optimised as the rounds enter it
    // (one long call would optimise it on stack, with no feedback for its return, which then
    // deoptimised at the end of each of the first rounds' calls).
    for (let c = 0; c < WARM_UP_CALLS; c++) run(dev, drv, buffers, CALL_BATCHES, moving);
    if (fixedBatches !== undefined) {
      const batches = Number(fixedBatches);
      if (!Number.isInteger(batches) || batches < 0) throw new Error(`${BATCHES_ENV}=${fixedBatches} is not a batch count`);
      report('ring', `${name}${moving ? '_moving_buffers' : ''}_chains`, run(dev, drv, buffers, batches, moving), 'chains');
      continue;
    }
    // Rates are per CPU second of this process, so that time other processes take on a shared
    // machine does not count; the best round is the one least disturbed by them.
    const rounds = moving ? MOVING_ROUNDS : ROUNDS;
    const rates: number[] = [];
    for (let r = 0; r < rounds; r++) {
      let chains = 0;
      const start = process.cpuUsage();
      let cpuMicros = 0;
      while (cpuMicros < ROUND_MS * 1000) {
        chains += run(dev, drv, buffers, CALL_BATCHES, moving);
        const used = process.cpuUsage(start);
        cpuMicros = used.user + used.system;
      }
      rates.push((chains * 1e6) / cpuMicros);
    }
    rates.sort((a, b) => a - b);
    report('ring', `${name}${moving ? '_moving_buffers' : ''}_chains_per_s`, Math.round(rates[rounds - 1]), 'chains/s', {
      median: Math.round(rates[rounds >> 1]),
      queueSize: SIZE,
      batch: BATCH,
      eventIdx: true,
      rounds,
      loadAverage: loadavg()[0],
    });
  }
}

/** Run this file again for one layout, its JSON lines passed through. */
function measureApart(name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], {
      env: { ...process.env, [LAYOUT_ENV]: name },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`the ${name} ring's process ended with ${signal ?? `code ${code}`}`)),
    );
  });
}

export async function main(): Promise<void> {
  for (const name of Object.keys(RINGS)) {
    step(`running the ${name} ring in a process of its own`);
    await measureApart(name);
  }
}

const only = process.env[LAYOUT_ENV];
if (only !== undefined) measure(only);
