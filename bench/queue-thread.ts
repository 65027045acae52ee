/**
 * `npm run bench -- queue-thread`: does serving a device's queues in a worker thread pay? Two
 * back-end processes serve the same raw file on tmpfs as two blk devices each
 * (bench/_blk-serve-threads.ts): `main` serves both on its main thread, `worker` each in a
 * worker thread of its own, guest memory mapped and kick eventfds watched there. Both poll with
 * the default budget. paravirt's blk driver reads 4 KiB at random at queue depth 32 over the
 * vhost-user front-end, in alternating rounds:
 *
 * - `one`: one device of each back-end busy (and qemu-storage-daemon's, for reference): what a
 *   thread hop, or its absence, does to one queue;
 * - `two`: both devices of a back-end busy at once, from two drivers: whether two queues on two
 *   threads beat two queues sharing one event loop.
 *
 * Reported per side: median IOPS, the back-end's CPU per read (all its threads, from /proc), the
 * driver process's CPU per read, and the back-end's CPU while connected and quiet. The poll
 * budget is the default, or PARAVIRT_BENCH_POLL_US (0: never poll).
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { cpuSeconds } from './_process-cpu.ts';
import { report, step } from './_report.ts';
import { readOnlyStorageDaemon, tmpfsDisk } from './_tmpfs-disk.ts';
import { randomIo } from '../src/cli/blk-workload.ts';
import { BlkDriver } from '../src/devices/blk/driver.ts';
import { DEFAULT_POLL_MICROS } from '../src/devices/host-options.ts';
import { VhostUserFrontend } from '../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../src/virtio/constants.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';

const SERVE = fileURLToPath(new URL('./_blk-serve-threads.ts', import.meta.url));
const DISK_BYTES = 64 * 1024 * 1024;
const BLOCK = 4096;
const DEPTH = 32;
const ROUND_SECONDS = 2;
const ROUNDS = 3;
const QUIET_SECONDS = 4;
/** From the last round to the quiet window: longer than one round, so both back-ends have been idle for it. */
const SETTLE_MS = ROUND_SECONDS * 1000 + 1000;
const POLL_US = pollBudget(process.env.PARAVIRT_BENCH_POLL_US);

function pollBudget(value: string | undefined): number {
  if (value === undefined) return DEFAULT_POLL_MICROS;
  if (!/^\d+$/.test(value)) throw new Error(`PARAVIRT_BENCH_POLL_US "${value}" is not a whole number of microseconds`);
  return Number(value);
}
const log = pino({ level: 'warn' });
/** Two back-ends and qsd started, 15 rounds of 2 s, the quiet window: about 60 s at a load of 15. */
export const deadlineSeconds = 180;
const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface Runs {
  readonly iops: number[];
  readonly backendCpuPerRead: number[];
  readonly driverCpuPerRead: number[];
}

interface Side {
  readonly name: string;
  /** The back-end's process, when its CPU time can be read (not for the chrooted qsd). */
  readonly pid: number | undefined;
  readonly drivers: BlkDriver[];
  readonly one: Runs;
  readonly two: Runs;
}

const runs = (): Runs => ({ iops: [], backendCpuPerRead: [], driverCpuPerRead: [] });

async function connect(socketPath: string): Promise<BlkDriver> {
  const blk = await BlkDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log }), { log });
  await randomIo(blk, { depth: DEPTH, blockSize: BLOCK, seconds: 1 }); // warm-up, and the worker's first compilation
  return blk;
}

/** One round on `drivers` at once: IOPS summed, CPU per read of the back-end and of this process. */
async function round(side: Side, drivers: readonly BlkDriver[], into: Runs): Promise<void> {
  step(`reading from ${side.name} on ${drivers.length} device(s)`);
  const backend = side.pid === undefined ? 0 : cpuSeconds(side.pid);
  const driver = process.cpuUsage();
  const results = await Promise.all(drivers.map((blk) => randomIo(blk, { depth: DEPTH, blockSize: BLOCK, seconds: ROUND_SECONDS })));
  const used = process.cpuUsage(driver);
  const ops = results.reduce((n, r) => n + r.ops, 0);
  into.iops.push(results.reduce((n, r) => n + r.iops, 0));
  if (side.pid !== undefined) into.backendCpuPerRead.push(((cpuSeconds(side.pid) - backend) * 1e6) / ops);
  into.driverCpuPerRead.push((used.user + used.system) / ops);
}

async function startParavirt(dir: string, image: string, mode: 'main' | 'worker', stops: (() => Promise<unknown>)[]): Promise<Side> {
  step(`starting the ${mode}-thread back-end`);
  const sockets = [0, 1].map((i) => join(dir, `${mode}-${i}.sock`));
  const serve = new PeerProcess(`blk back-end (${mode})`, [process.execPath, '--import', 'tsx', SERVE, mode, String(POLL_US), image, ...sockets], {
    textStdout: true,
  });
  stops.push(() => serve.stop());
  await serve.waitForOutput(/listening/, 0, 'starting to listen');
  const drivers: BlkDriver[] = [];
  for (const s of sockets) drivers.push(await connect(s));
  return { name: mode, pid: serve.child.pid, drivers, one: runs(), two: runs() };
}

function summary(r: Runs): Record<string, unknown> {
  return {
    runs: r.iops.map(Math.round),
    ...(r.backendCpuPerRead.length > 0 ? { backend_cpu_us_per_read: Number(median(r.backendCpuPerRead).toFixed(1)) } : {}),
    driver_cpu_us_per_read: Number(median(r.driverCpuPerRead).toFixed(1)),
  };
}

export async function main(): Promise<void> {
  const disk = tmpfsDisk('paravirt-bench-queue-thread-', DISK_BYTES);
  const { dir, image } = disk;
  const stops: (() => Promise<unknown>)[] = [];
  const sides: Side[] = [];
  try {
    const daemon = await readOnlyStorageDaemon(disk);
    stops.push(daemon.stop);
    const qsd: Side = { name: 'qsd', pid: undefined, drivers: [await connect(daemon.socketPath)], one: runs(), two: runs() };
    sides.push(qsd);
    const onMain = await startParavirt(dir, image, 'main', stops);
    sides.push(onMain);
    const inWorkers = await startParavirt(dir, image, 'worker', stops);
    sides.push(inWorkers);
    // Alternating order, so the machine's load moves over every side alike.
    for (let r = 0; r < ROUNDS; r++) {
      for (const side of r % 2 === 0 ? sides : [...sides].reverse()) await round(side, side.drivers.slice(0, 1), side.one);
      for (const side of r % 2 === 0 ? [onMain, inWorkers] : [inWorkers, onMain]) await round(side, side.drivers, side.two);
    }
    step('staying connected and quiet');
    // Every poll window runs out, and the side busy last settles as long as the other did: right
    // after a burst V8 still collects and shrinks its heaps for a second or two. The I/O threads
    // stay up (bench/_blk-serve-threads.ts).
    await delay(SETTLE_MS);
    const paravirt = [onMain, inWorkers];
    const before = paravirt.map((s) => cpuSeconds(s.pid!));
    const t0 = performance.now();
    await delay(QUIET_SECONDS * 1000);
    const seconds = (performance.now() - t0) / 1000;
    const context = { block: BLOCK, depth: DEPTH, rounds: ROUNDS, roundSeconds: ROUND_SECONDS, pollUs: POLL_US, loadavg: loadavg()[0] };
    for (const side of sides) {
      report('queue-thread', `one_device_read_4k_qd${DEPTH}_iops_${side.name}`, Math.round(median(side.one.iops)), 'IOPS', {
        ...context,
        ...(side === qsd ? { qsd: daemon.version } : {}),
        ...summary(side.one),
      });
    }
    report('queue-thread', 'one_device_worker_over_main', Number((median(inWorkers.one.iops) / median(onMain.one.iops)).toFixed(2)), 'ratio');
    report('queue-thread', 'one_device_worker_over_qsd', Number((median(inWorkers.one.iops) / median(qsd.one.iops)).toFixed(2)), 'ratio');
    for (const side of paravirt) {
      report('queue-thread', `two_devices_read_4k_qd${DEPTH}_iops_${side.name}`, Math.round(median(side.two.iops)), 'IOPS', { ...context, ...summary(side.two) });
    }
    report('queue-thread', 'two_devices_worker_over_main', Number((median(inWorkers.two.iops) / median(onMain.two.iops)).toFixed(2)), 'ratio');
    paravirt.forEach((side, i) => {
      report('queue-thread', `idle_cpu_${side.name}`, Number(((100 * (cpuSeconds(side.pid!) - before[i])) / seconds).toFixed(2)), '% of a core', context);
    });
  } finally {
    step('closing the drivers and stopping the back-ends');
    for (const side of sides) for (const blk of side.drivers) await blk.close();
    for (const stop of stops) await stop();
    disk.remove();
  }
}
