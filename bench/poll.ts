/**
 * `npm run bench -- poll`: what the poll budget (`paravirt serve --poll-us`) buys and costs. One
 * `paravirt serve blk` per budget serves the same raw file on tmpfs to paravirt's blk driver over
 * the vhost-user front-end (as bench/frontend.ts): 4 KiB random reads at queue depth 32 in
 * alternating rounds of a few seconds, then every driver stays connected and quiet. Reported per
 * budget: the median IOPS and its ratio to not polling, the CPU per read of the back-end and of
 * the driver (this process, which runs one side's rounds at a time), the reads per kick the
 * driver sent and per call it was woken by, and the back-end's CPU while quiet (a percentage of
 * one core, from /proc; 0.25 % is one 10 ms tick in 4 s).
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { cpuSeconds } from './_process-cpu.ts';
import { report, step } from './_report.ts';
import { tmpfsDisk } from './_tmpfs-disk.ts';
import { randomIo } from '../src/cli/blk-workload.ts';
import { BlkDriver } from '../src/devices/blk/driver.ts';
import { DEFAULT_POLL_MICROS } from '../src/devices/host-options.ts';
import { VhostUserFrontend } from '../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../src/virtio/constants.ts';
import type { InterruptHandlers } from '../src/virtio/driver.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';

const PARAVIRT = fileURLToPath(new URL('../bin/paravirt.js', import.meta.url));
const DISK_BYTES = 64 * 1024 * 1024;
const BLOCK = 4096;
const DEPTH = 32;
const ROUND_SECONDS = 2;
const ROUNDS = 3;
const QUIET_SECONDS = 4;
/** Budgets compared: never poll, the default, and a long one. */
const BUDGETS = [0, DEFAULT_POLL_MICROS, 1000];
const log = pino({ level: 'warn' });
/** Three back-ends started and warmed up, nine rounds, the quiet window: about 70 s at a load of 16. */
export const deadlineSeconds = 180;
const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface Side {
  readonly pollUs: number;
  readonly serve: PeerProcess;
  readonly pid: number;
  blk?: BlkDriver;
  readonly iops: number[];
  readonly cpuMicrosPerRead: number[];
  readonly driverCpuMicrosPerRead: number[];
  /** Kicks the driver sent and used-buffer interrupts (call eventfd wake-ups) it took, so far. */
  readonly notifications: { kicks: number; calls: number };
  reads: number;
}

/**
 * Count the kicks `transport` sends and the used-buffer interrupts it delivers, by wrapping its
 * notify and the handlers the driver installs; the driver runs as it otherwise would.
 */
function countNotifications(transport: VhostUserFrontend, counts: { kicks: number; calls: number }): void {
  const notify = transport.notify.bind(transport);
  const install = transport.setInterruptHandlers.bind(transport);
  transport.notify = (index: number): void => {
    counts.kicks++;
    notify(index);
  };
  transport.setInterruptHandlers = (handlers: InterruptHandlers): void =>
    install({
      queue: (index) => {
        counts.calls++;
        handlers.queue(index);
      },
      config: () => handlers.config(),
    });
}

const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function start(dir: string, image: string, pollUs: number): Promise<Side> {
  const socketPath = join(dir, `poll-${pollUs}.sock`);
  step(`starting paravirt serve blk --poll-us ${pollUs}`);
  const serve = new PeerProcess(
    'paravirt serve blk',
    [process.execPath, PARAVIRT, 'serve', 'blk', '--socket-path', socketPath, '--image', image, '--read-only', '--poll-us', String(pollUs)],
    { textStdout: true },
  );
  const side: Side = {
    pollUs, serve, pid: serve.child.pid!, iops: [], cpuMicrosPerRead: [], driverCpuMicrosPerRead: [], notifications: { kicks: 0, calls: 0 }, reads: 0,
  };
  await serve.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  const transport = await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log });
  countNotifications(transport, side.notifications);
  side.blk = await BlkDriver.open(transport, { log });
  await randomIo(side.blk, { depth: DEPTH, blockSize: BLOCK, seconds: 1 }); // warm-up
  side.notifications.kicks = side.notifications.calls = 0;
  return side;
}

async function round(side: Side): Promise<void> {
  step(`reading through paravirt serve blk --poll-us ${side.pollUs}`);
  const cpu = cpuSeconds(side.pid);
  const driverCpu = process.cpuUsage();
  const busy = await randomIo(side.blk!, { depth: DEPTH, blockSize: BLOCK, seconds: ROUND_SECONDS });
  const driverUsed = process.cpuUsage(driverCpu);
  side.iops.push(busy.iops);
  side.cpuMicrosPerRead.push(((cpuSeconds(side.pid) - cpu) * 1e6) / busy.ops);
  side.driverCpuMicrosPerRead.push((driverUsed.user + driverUsed.system) / busy.ops);
  side.reads += busy.ops;
}

export async function main(): Promise<void> {
  const disk = tmpfsDisk('paravirt-bench-poll-', DISK_BYTES);
  const { dir, image } = disk;
  const sides: Side[] = [];
  try {
    for (const budget of BUDGETS) sides.push(await start(dir, image, budget));
    // Alternating rounds, so the machine's load moves over all budgets alike.
    for (let r = 0; r < ROUNDS; r++) for (const side of r % 2 === 0 ? sides : [...sides].reverse()) await round(side);
    step('staying connected and quiet');
    await delay(200); // every poll window (at most 1 ms here) runs out
    const before = sides.map((s) => cpuSeconds(s.pid));
    const t0 = performance.now();
    await delay(QUIET_SECONDS * 1000);
    const seconds = (performance.now() - t0) / 1000;
    const context = { block: BLOCK, depth: DEPTH, rounds: ROUNDS, roundSeconds: ROUND_SECONDS, quietSeconds: QUIET_SECONDS, loadavg: loadavg()[0] };
    const base = median(sides[0].iops);
    sides.forEach((side, i) => {
      report('poll', `read_4k_qd${DEPTH}_iops_poll_${side.pollUs}us`, Math.round(median(side.iops)), 'IOPS', {
        ...context,
        runs: side.iops.map(Math.round),
        over_no_poll: Number((median(side.iops) / base).toFixed(2)),
        backend_cpu_us_per_read: Number(median(side.cpuMicrosPerRead).toFixed(1)),
        driver_cpu_us_per_read: Number(median(side.driverCpuMicrosPerRead).toFixed(1)),
        reads_per_kick: Math.round(side.reads / Math.max(1, side.notifications.kicks)),
        reads_per_call: Math.round(side.reads / Math.max(1, side.notifications.calls)),
      });
      report('poll', `idle_cpu_poll_${side.pollUs}us`, Number(((100 * (cpuSeconds(side.pid) - before[i])) / seconds).toFixed(2)), '% of a core', context);
    });
  } finally {
    step('closing the drivers and stopping the back-ends');
    for (const side of sides) {
      await side.blk?.close();
      await side.serve.stop();
    }
    disk.remove();
  }
}
