/**
 * Virtqueue microbenchmark on one core: both sides of a queue in one thread, moving
 * one-descriptor chains in batches of 32 (the driver adds 32 and kicks, the device pops 32,
 * pushes them and publishes, the driver collects 32). Reports chains per second per ring layout,
 * twice: with each buffer always in the same ring slot (a driver with fixed buffers per slot, the
 * headline figure), and with buffers moving from slot to slot (`_moving_buffers`), where the
 * device finds a different buffer in a slot each time. Then device-readable buffers, as a
 * transmit queue gets them: taken by pop() and push() (`_readable`, the general path), and
 * served in place by drainSpans (`_spans`, what a span handler gets).
 *
 * Each layout runs in a process of its own, once on each CPU (`cpu` in its lines). A device process serves its queues with one ring
 * layout (VIRTIO_F_RING_PACKED is negotiated per device, and in practice the same for all of a
 * front-end's devices), so its call sites see one queue class; measuring the second layout in a
 * process that already ran the first would measure the loop below made polymorphic, which
 * cost the packed figures up to a third of their rate (see docs/performance.md). Each process is
 * pinned to one CPU, and every CPU has its turn, because the two CPUs of the machines these
 * figures come from do not run alike: one ran the same code at 0.6–0.7 of the other's rate for
 * hours at a time (docs/performance.md, "The two CPUs"), and an unpinned process measured
 * whichever the scheduler chose.
 *
 * For instruction counts under valgrind, which are repeatable whatever the machine's load:
 * PARAVIRT_BENCH_RING_LAYOUT=split|packed runs one layout in this process, and with
 * PARAVIRT_BENCH_RING_BATCHES=N it moves exactly N batches after the warm-up instead of timing
 * rounds (count two N and divide the difference by the chains);
 * PARAVIRT_BENCH_RING_VARIANT=fixed|moving|readable|spans runs that variant alone.
 */
import { spawn } from 'node:child_process';
import { availableParallelism, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { report, step } from './_report.ts';
import { GuestMemory } from '../src/virtio/memory.ts';
import type { DeviceQueue, DriverQueue, QueueConfig, Segment, SpanVisitor } from '../src/virtio/queue.ts';
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
/** CPU milliseconds per round (rounds per variant in VARIANTS). */
const ROUND_MS = 150;
/** Batches per call of run() in the timed rounds, and calls of it to warm up. */
const CALL_BATCHES = 100;
const WARM_UP_CALLS = 200;
const LAYOUT_ENV = 'PARAVIRT_BENCH_RING_LAYOUT';
const BATCHES_ENV = 'PARAVIRT_BENCH_RING_BATCHES';
const VARIANT_ENV = 'PARAVIRT_BENCH_RING_VARIANT';
/** Set by main() in each layout's process: the CPU it is pinned to. */
const CPU_ENV = 'PARAVIRT_BENCH_RING_CPU';

/**
 * What the driver offers and how the device takes it: device-writable buffers, each in the same
 * slot every batch (`fixed`) or one slot further along each batch (`moving`), popped and pushed
 * with BUFFER_BYTES written; or device-readable buffers in fixed slots, popped and pushed with
 * nothing written (`readable`) or served by drainSpans (`spans`).
 */
const VARIANTS = {
  fixed: { metric: '', rounds: 20 },
  moving: { metric: '_moving_buffers', rounds: 10 },
  readable: { metric: '_readable', rounds: 10 },
  spans: { metric: '_spans', rounds: 10 },
} as const;
type Variant = keyof typeof VARIANTS;

/** What the `spans` variant's visits read, so that reading the buffer is not optimised away. */
let spanSink = 0;
const visitSpan: SpanVisitor = (bytes, offset, length) => {
  spanSink = (spanSink + bytes[offset] + length) | 0;
  return true;
};

type Layout = (size: number) => SplitRingLayout;
type MakeDevice = (memory: GuestMemory, config: QueueConfig, name: string) => DeviceQueue;
type MakeDriver = (memory: GuestMemory, config: QueueConfig, name: string) => DriverQueue<number>;

/** The ring layouts measured. */
const RINGS: Record<string, [layout: Layout, makeDevice: MakeDevice, makeDriver: MakeDriver]> = {
  split: [splitRingLayout, (m, c, n) => new SplitDeviceQueue(m, c, n), (m, c, n) => new SplitDriverQueue<number>(m, c, n)],
  packed: [packedRingLayout, (m, c, n) => new PackedDeviceQueue(m, c, n), (m, c, n) => new PackedDriverQueue<number>(m, c, n)],
};

/**
 * Move `batches` batches through the queue as `variant` says; returns the chains moved. Moving
 * buffers start each batch one buffer further along `buffers` (BATCH + 1 of them), so no ring
 * slot sees the same buffer twice in a row.
 */
function run(dev: DeviceQueue, drv: DriverQueue<number>, buffers: readonly Segment[][], batches: number, variant: Variant): number {
  const none: Segment[] = [];
  const readable = variant === 'readable' || variant === 'spans';
  for (let b = 0; b < batches; b++) {
    const shift = variant === 'moving' ? b : 0;
    for (let i = 0; i < BATCH; i++) {
      const buffer = buffers[(i + shift) % buffers.length];
      if (readable) drv.add(buffer, none, i);
      else drv.add(none, buffer, i);
    }
    drv.kick();
    if (variant === 'spans') {
      if (dev.drainSpans?.(visitSpan, BATCH) !== BATCH) throw new Error('ring benchmark: the device served fewer spans than were added');
    } else {
      for (let i = 0; i < BATCH; i++) {
        const chain = dev.pop();
        if (chain === null) throw new Error('ring benchmark: the device found fewer chains than were added');
        dev.push(chain, readable ? 0 : BUFFER_BYTES);
      }
    }
    dev.publish();
    for (let i = 0; i < BATCH; i++) {
      if (drv.getUsed() === null) throw new Error('ring benchmark: the driver got back fewer chains than were used');
    }
  }
  return batches * BATCH;
}

/** Measure one layout in this process, variant by variant. */
function measure(name: string): void {
  const ring = RINGS[name];
  if (ring === undefined) throw new Error(`${LAYOUT_ENV}=${name} names no ring layout (split or packed)`);
  const [layout, makeDevice, makeDriver] = ring;
  const fixedBatches = process.env[BATCHES_ENV];
  const chosen = process.env[VARIANT_ENV];
  if (chosen !== undefined && !(chosen in VARIANTS)) throw new Error(`${VARIANT_ENV}=${chosen} names no variant (${Object.keys(VARIANTS).join(', ')})`);
  const variants = chosen === undefined ? (Object.keys(VARIANTS) as Variant[]) : [chosen as Variant];
  for (const variant of variants) {
    const { metric, rounds } = VARIANTS[variant];
    step(`running the ${name} ring, ${variant}`);
    const memory = GuestMemory.allocate(1 << 20);
    const at = placeRingAreas(layout(SIZE), 0x1000);
    const config: QueueConfig = { ...at, size: SIZE, eventIdx: true, indirect: false, inOrder: false };
    const drv = makeDriver(memory, config, `${name}-bench`);
    const dev = makeDevice(memory, config, `${name}-bench`);
    const buffers = Array.from({ length: BATCH + 1 }, (_, i) => [{ addr: at.end + i * BUFFER_BYTES, len: BUFFER_BYTES }]);
    // Warm up with the calls the rounds make, so that run() is optimised as the rounds enter it
    // (one long call would optimise it on stack, with no feedback for its return, which then
    // deoptimised at the end of each of the first rounds' calls).
    for (let c = 0; c < WARM_UP_CALLS; c++) run(dev, drv, buffers, CALL_BATCHES, variant);
    if (fixedBatches !== undefined) {
      const batches = Number(fixedBatches);
      if (!Number.isInteger(batches) || batches < 0) throw new Error(`${BATCHES_ENV}=${fixedBatches} is not a batch count`);
      report('ring', `${name}${metric}_chains`, run(dev, drv, buffers, batches, variant), 'chains');
      continue;
    }
    // Rates are per CPU second of this process, so that time other processes take on a shared
    // machine does not count; the best round is the one least disturbed by them.
    const rates: number[] = [];
    for (let r = 0; r < rounds; r++) {
      let chains = 0;
      const start = process.cpuUsage();
      let cpuMicros = 0;
      while (cpuMicros < ROUND_MS * 1000) {
        chains += run(dev, drv, buffers, CALL_BATCHES, variant);
        const used = process.cpuUsage(start);
        cpuMicros = used.user + used.system;
      }
      rates.push((chains * 1e6) / cpuMicros);
    }
    rates.sort((a, b) => a - b);
    report('ring', `${name}${metric}_chains_per_s`, Math.round(rates[rounds - 1]), 'chains/s', {
      median: Math.round(rates[rounds >> 1]),
      queueSize: SIZE,
      batch: BATCH,
      eventIdx: true,
      rounds,
      cpu: process.env[CPU_ENV] === undefined ? 'any' : Number(process.env[CPU_ENV]),
      loadAverage: loadavg()[0],
    });
  }
}

/** Run this file again for one layout, pinned to `cpu`, its JSON lines passed through. */
function measureApart(name: string, cpu: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('taskset', ['-c', String(cpu), process.execPath, ...process.execArgv, fileURLToPath(import.meta.url)], {
      env: { ...process.env, [LAYOUT_ENV]: name, [CPU_ENV]: String(cpu) },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`the ${name} ring's process ended with ${signal ?? `code ${code}`}`)),
    );
  });
}

export async function main(): Promise<void> {
  for (let cpu = 0; cpu < availableParallelism(); cpu++) {
    for (const name of Object.keys(RINGS)) {
      step(`running the ${name} ring in a process of its own on CPU ${cpu}`);
      await measureApart(name, cpu);
    }
  }
}

const only = process.env[LAYOUT_ENV];
if (only !== undefined) measure(only);
