/**
 * The blk driver over the vhost-user front-end: 4 KiB random reads at queue depth 32 against
 * qemu-storage-daemon's vhost-user-blk export and against `paravirt serve blk`, both serving the
 * same raw file on tmpfs (/dev/shm) from their own process, in alternating rounds; each side
 * reports its median. The ratio says how paravirt's back-end compares with QEMU's on the same
 * front-end and driver; fio with io_uring on the same file (page cache, no virtio at all) is the
 * ceiling of what the host can do. Each side's CPU per read is reported for this process (driver
 * and front-end) and for the back-end's process (all its threads, from /proc).
 *
 * With PARAVIRT_BENCH_CPU_PROF=DIR `paravirt serve blk` runs under `node --cpu-prof` (profiles
 * written to DIR when it stops) and the functions of its event loop with the most self time are
 * reported; its busy share covers the whole run, the qsd rounds included. One more round against
 * paravirt's back-end then runs with this process (the driver) under the V8 CPU profiler, and the
 * driver's busiest functions are reported too (`profile_self_driver`).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { InProcessProfiler, mainThreadProfile, summarizeCpuProfile } from './_cpuprofile.ts';
import { cpuSeconds } from './_process-cpu.ts';
import { report, step } from './_report.ts';
import { readOnlyStorageDaemon, tmpfsDisk } from './_tmpfs-disk.ts';
import { randomIo } from '../src/cli/blk-workload.ts';
import { BlkDriver } from '../src/devices/blk/driver.ts';
import { DEFAULT_POLL_MICROS } from '../src/devices/host-options.ts';
import { VhostUserFrontend } from '../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../src/virtio/constants.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';

const PARAVIRT = fileURLToPath(new URL('../bin/paravirt.js', import.meta.url));
const DISK_BYTES = 256 * 1024 * 1024;
const BLOCK = 4096;
const DEPTH = 32;
const WARMUP_SECONDS = 1;
/** Seconds per round; rounds alternate between the two back-ends so load on the shared machine hits both alike. */
const ROUND_SECONDS = 2;
const ROUNDS = 5;
/** The driver's poll budget: the back-end's default (`--poll-us`). */
const POLL_MICROS = DEFAULT_POLL_MICROS;
const log = pino({ level: 'warn' });
const repo = dirname(dirname(fileURLToPath(import.meta.url)));
/** Profile entries reported when profiling. */
const PROFILE_TOP = 15;

interface Side {
  readonly name: string;
  readonly blk: BlkDriver;
  readonly iops: number[];
  /** This process's CPU time per read: the driver and front-end's cost, whatever the back-end. */
  readonly cpuMicrosPerOp: number[];
  /** The back-end's process and its CPU time per read (all its threads). */
  readonly pid: number;
  readonly backendCpuMicrosPerOp: number[];
}

async function open(name: string, socketPath: string, pid: number): Promise<Side> {
  step(`connecting to ${name} and warming up`);
  const blk = await BlkDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log }), { pollMicros: POLL_MICROS, log });
  await randomIo(blk, { depth: DEPTH, blockSize: BLOCK, seconds: WARMUP_SECONDS });
  return { name, blk, iops: [], cpuMicrosPerOp: [], pid, backendCpuMicrosPerOp: [] };
}

async function round(side: Side): Promise<void> {
  step(`reading from ${side.name}`);
  const cpu = process.cpuUsage();
  const backendCpu = cpuSeconds(side.pid);
  const result = await randomIo(side.blk, { depth: DEPTH, blockSize: BLOCK, seconds: ROUND_SECONDS });
  const used = process.cpuUsage(cpu);
  side.iops.push(result.iops);
  side.cpuMicrosPerOp.push((used.user + used.system) / result.ops);
  side.backendCpuMicrosPerOp.push(((cpuSeconds(side.pid) - backendCpu) * 1e6) / result.ops);
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

interface FioJson {
  jobs: { read: { iops: number } }[];
  'fio version': string;
}

function fio(image: string): { iops: number; version: string } {
  const out = execFileSync(
    'fio',
    [
      '--name=ceiling',
      `--filename=${image}`,
      '--ioengine=io_uring',
      '--direct=0',
      '--rw=randread',
      `--bs=${BLOCK}`,
      `--iodepth=${DEPTH}`,
      `--runtime=${ROUND_SECONDS * ROUNDS}`,
      `--ramp_time=${WARMUP_SECONDS}`,
      '--time_based',
      '--output-format=json',
    ],
    { encoding: 'utf8' },
  );
  const json = JSON.parse(out) as FioJson;
  return { iops: json.jobs[0].read.iops, version: json['fio version'] };
}

const pidOf = (peer: PeerProcess): number => {
  if (peer.child.pid === undefined) throw new Error(peer.describe('starting'));
  return peer.child.pid;
};

export async function main(): Promise<void> {
  const profileDir = process.env.PARAVIRT_BENCH_CPU_PROF;
  if (profileDir !== undefined) mkdirSync(profileDir, { recursive: true });
  const disk = tmpfsDisk('paravirt-bench-', DISK_BYTES);
  const { image } = disk;
  const stops: (() => Promise<unknown>)[] = [];
  const sides: Side[] = [];
  try {
    const daemon = await readOnlyStorageDaemon(disk);
    stops.push(daemon.stop);
    const socketPath = join(disk.dir, 'paravirt.sock');
    step('starting paravirt serve blk');
    const node = profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`];
    const serve = new PeerProcess('paravirt serve blk', [process.execPath, ...node, PARAVIRT, 'serve', 'blk', '--socket-path', socketPath, '--image', image, '--read-only'], {
      textStdout: true,
    });
    stops.push(() => serve.stop());
    await serve.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');

    sides.push(await open('qsd', daemon.socketPath, pidOf(daemon.process)), await open('paravirt', socketPath, pidOf(serve)));
    for (let i = 0; i < ROUNDS; i++) for (const side of sides) await round(side);
    const [qsd, paravirt] = sides;
    // The profiler slows what it watches: its round is one more, not one of those measured.
    const driverProfiler = await InProcessProfiler.open(profileDir === undefined ? undefined : join(profileDir, 'driver'));
    if (driverProfiler !== undefined) {
      step('profiling the driver against paravirt serve blk');
      await driverProfiler.around(() => randomIo(paravirt.blk, { depth: DEPTH, blockSize: BLOCK, seconds: ROUND_SECONDS }));
      driverProfiler.close();
    }
    const context = { block: BLOCK, depth: DEPTH, rounds: ROUNDS, round_seconds: ROUND_SECONDS, file: 'tmpfs', loadavg: loadavg()[0] };
    for (const side of sides) {
      report('frontend', `read_4k_qd${DEPTH}_${side.name}_iops`, Math.round(median(side.iops)), 'IOPS', {
        ...context,
        ...(side === qsd ? { qsd: daemon.version } : {}),
        driver_cpu_us_per_op: Number(median(side.cpuMicrosPerOp).toFixed(2)),
        backend_cpu_us_per_op: Number(median(side.backendCpuMicrosPerOp).toFixed(2)),
        runs: side.iops.map(Math.round),
        poll_us: POLL_MICROS,
      });
    }
    report('frontend', 'paravirt_over_qsd', Number((median(paravirt.iops) / median(qsd.iops)).toFixed(3)), 'ratio');
    step('running fio on the image');
    const ceiling = fio(image);
    report('frontend', `read_4k_qd${DEPTH}_fio_io_uring_iops`, Math.round(ceiling.iops), 'IOPS', { ...context, fio: ceiling.version, direct: 0 });
    report('frontend', 'paravirt_over_fio', Number((median(paravirt.iops) / ceiling.iops).toFixed(3)), 'ratio');
    if (profileDir !== undefined) {
      step('stopping paravirt serve blk for its profile');
      for (const side of sides.splice(0)) await side.blk.close();
      await serve.stop();
      reportProfile(mainThreadProfile(profileDir, pidOf(serve)));
    }
    driverProfiler?.summary(repo, PROFILE_TOP).forEach(({ frame, share, micros }, rank) =>
      report('frontend', 'profile_self_driver', Math.round(10000 * share) / 100, '% of busy', { rank: rank + 1, frame, ms: Math.round(micros / 1000) }),
    );
  } finally {
    step('closing the drivers and stopping the back-ends');
    for (const side of sides) await side.blk.close();
    for (const stop of stops) await stop();
    disk.remove();
  }
}

/** The busiest functions of the paravirt back-end's event loop over the whole run. */
function reportProfile(path: string): void {
  const summary = summarizeCpuProfile(path, repo, PROFILE_TOP);
  const round2 = (x: number): number => Math.round(x * 100) / 100;
  report('frontend', 'profile_busy_share_paravirt', round2((100 * summary.busyMicros) / summary.totalMicros), '%', { profile: path });
  summary.top.forEach((entry, rank) =>
    report('frontend', 'profile_self_paravirt', round2(100 * entry.share), '% of busy', { rank: rank + 1, frame: entry.frame, ms: Math.round(entry.micros / 1000) }));
}
