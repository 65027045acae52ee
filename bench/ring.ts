/**
 * Virtqueue microbenchmark on one core: both sides of a queue in one thread, moving
 * one-descriptor chains in batches of 32 (the driver adds 32 and kicks, the device pops 32,
 * pushes them and publishes, the driver collects 32). Reports chains per second per ring layout,
 * twice: with each buffer always in the same ring slot (a driver with fixed buffers per slot, the
 * headline figure), and with buffers moving from slot to slot (`_moving_buffers`), where the
 * device finds a different buffer in a slot each time and makes a new view of guest memory for it.
 */
import { loadavg } from 'node:os';
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

type Layout = (size: number) => SplitRingLayout;
type MakeDevice = (memory: GuestMemory, config: QueueConfig, name: string) => DeviceQueue;
type MakeDriver = (memory: GuestMemory, config: QueueConfig, name: string) => DriverQueue<number>;

/** The ring layouts measured: one entry each. */
const RINGS: [name: string, layout: Layout, makeDevice: MakeDevice, makeDriver: MakeDriver][] = [
  ['split', splitRingLayout, (m, c, n) => new SplitDeviceQueue(m, c, n), (m, c, n) => new SplitDriverQueue<number>(m, c, n)],
  ['packed', packedRingLayout, (m, c, n) => new PackedDeviceQueue(m, c, n), (m, c, n) => new PackedDriverQueue<number>(m, c, n)],
];

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

export async function main(): Promise<void> {
  for (const moving of [false, true]) {
    for (const [name, layout, makeDevice, makeDriver] of RINGS) {
      step(`running the ${name} ring${moving ? ' with moving buffers' : ''}`);
      const memory = GuestMemory.allocate(1 << 20);
      const at = placeRingAreas(layout(SIZE), 0x1000);
      const config: QueueConfig = { ...at, size: SIZE, eventIdx: true, indirect: false, inOrder: false };
      const drv = makeDriver(memory, config, `${name}-bench`);
      const dev = makeDevice(memory, config, `${name}-bench`);
      const buffers = Array.from({ length: BATCH + 1 }, (_, i) => [{ addr: at.end + i * BUFFER_BYTES, len: BUFFER_BYTES }]);
      run(dev, drv, buffers, 20_000, moving); // warm up: let the optimising compiler settle
      // Rates are per CPU second of this process, so that time other processes take on a shared
      // machine does not count; the best round is the one least disturbed by them.
      const rounds = moving ? MOVING_ROUNDS : ROUNDS;
      const rates: number[] = [];
      for (let r = 0; r < rounds; r++) {
        let chains = 0;
        const start = process.cpuUsage();
        let cpuMicros = 0;
        while (cpuMicros < ROUND_MS * 1000) {
          chains += run(dev, drv, buffers, 100, moving);
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
}
