/**
 * What a pause costs the block I/O threads (src/storage/io-thread.ts): the latency of a 4 KiB read
 * through them when they have just served one (steady), the very first one (no thread yet), and
 * the first after a short pause, and the first after the disk sat idle for longer than the
 * threads' idle period, with the CPU the process used while it sat idle. Then the very first
 * read of threads warmed ahead of it (IoThreads.warm(), what a back-end does when its front-end
 * connects): right after warm() (as if warmed on the driver's DRIVER_OK) and WARM_LEAD_MS
 * after (a front-end that connected before its guest booted). Both builds: compiled (dist/, what
 * the `paravirt` command runs) and from source (tsx, where a new thread must load the TypeScript
 * loader first). Last, end to end: the compiled `paravirt serve blk` on a file on disk (not
 * tmpfs, so writes take the I/O threads), paravirt's own vhost-user front-end and blk driver
 * connected to it, and the latency of the first 4 KiB write made WARM_LEAD_MS after connecting
 * (as a guest booting behind QEMU's connection) and made at once.
 *
 *     npm run build && npm run bench -- io-idle
 */
import { spawn } from 'node:child_process';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import type { BlkDriver } from '../src/devices/blk/driver.ts';
import type { IoThreads as IoThreadsType, Op as OpType } from '../src/storage/io-thread.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';
import { report, step } from './_report.ts';

/** How long each pause lasts: past the threads' idle period (5 s in io-thread.ts). */
const PAUSE_MS = 5700;
const PAUSES = 2;
const SHORT_PAUSE_MS = 200;
const STEADY_READS = 500;
/** How long before its first read a warmed thread starts: less than a guest's boot, more than a thread's start. */
const WARM_LEAD_MS = 1000;

export const deadlineSeconds = 120;

interface IoThreadsModule {
  readonly IoThreads: typeof IoThreadsType;
  readonly Op: typeof OpType;
}

const PARAVIRT = fileURLToPath(new URL('../bin/paravirt.js', import.meta.url));
/** A directory on disk: a file in memory would take small writes on the event loop, never a thread. */
const DISK_DIR = '/var/tmp';
const log = pino({ level: 'warn' });

const BUILDS = [
  { build: 'compiled', module: new URL('../dist/storage/io-thread.js', import.meta.url).href },
  { build: 'source', module: new URL('../src/storage/io-thread.ts', import.meta.url).href },
];

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Measure one build in this process (each build in a process of its own: both load the same native types). */
async function measure(build: string, module: string): Promise<void> {
  const { IoThreads, Op } = (await import(module)) as IoThreadsModule;
  // Not tmpfs: the file's pages come from the page cache, but the reads go to the threads anyway.
  const path = join(tmpdir(), `paravirt-io-idle-${process.pid}.img`);
  await writeFile(path, new Uint8Array(1 << 20));
  const file = await open(path, 'r');
  const threads = new IoThreads(1);
  const buffer = new Uint8Array(4096);
  /** The latency of one 4 KiB read through `through`. */
  const readWith = (through: IoThreadsType): Promise<number> =>
    new Promise((resolve, reject) => {
      const start = performance.now();
      through.submit(Op.read, file.fd, 0, [buffer], (_, r) => (typeof r === 'number' ? resolve(performance.now() - start) : reject(r)), undefined);
    });
  /** The first read of threads warmed `leadMs` before it. */
  const warmedRead = async (leadMs: number): Promise<number> => {
    const warmed = new IoThreads(1);
    try {
      warmed.warm();
      if (leadMs > 0) await sleep(leadMs);
      return await readWith(warmed);
    } finally {
      await warmed.close();
    }
  };
  try {
    const read = (): Promise<number> => readWith(threads);
    const context = { build, load: loadavg()[0] };
    report('io-idle', `${build}_first_read_ms`, await read(), 'ms', context);
    const steady: number[] = [];
    for (let i = 0; i < STEADY_READS; i++) steady.push(await read());
    report('io-idle', `${build}_steady_read_ms`, median(steady), 'ms', { ...context, reads: STEADY_READS, statistic: 'median' });
    // What any read after a quiet spell pays (timer wake-up, cold caches), within the idle period.
    await sleep(SHORT_PAUSE_MS);
    report('io-idle', `${build}_read_after_short_pause_ms`, await read(), 'ms', { ...context, pauseMs: SHORT_PAUSE_MS });
    for (let p = 0; p < PAUSES; p++) {
      const cpu = process.cpuUsage();
      await sleep(PAUSE_MS);
      const used = process.cpuUsage(cpu);
      report('io-idle', `${build}_idle_cpu`, (100 * (used.user + used.system)) / (PAUSE_MS * 1000), '%', { ...context, pauseMs: PAUSE_MS });
      report('io-idle', `${build}_read_after_pause_ms`, await read(), 'ms', { ...context, pauseMs: PAUSE_MS, load: loadavg()[0] });
    }
    report('io-idle', `${build}_first_read_right_after_warm_ms`, await warmedRead(0), 'ms', { ...context, leadMs: 0, load: loadavg()[0] });
    report('io-idle', `${build}_first_read_after_warm_ms`, await warmedRead(WARM_LEAD_MS), 'ms', { ...context, leadMs: WARM_LEAD_MS, load: loadavg()[0] });
  } finally {
    await threads.close();
    await file.close();
    await rm(path, { force: true });
  }
}

/** The first write through a fresh `paravirt serve blk`, made `leadMs` after its front-end connected. */
async function serveFirstWrite(leadMs: number): Promise<void> {
  // Imported here, in the parent process only: the builds' processes load their own native types.
  const { BlkDriver } = await import('../src/devices/blk/driver.ts');
  const { VhostUserFrontend } = await import('../src/transports/vhost-user/frontend.ts');
  const { DeviceId } = await import('../src/virtio/constants.ts');
  const dir = await mkdtemp(join(DISK_DIR, 'paravirt-io-idle-'));
  const image = join(dir, 'disk.img');
  const socketPath = join(dir, 'blk.sock');
  await writeFile(image, new Uint8Array(1 << 20));
  const serve = new PeerProcess('paravirt serve blk', [process.execPath, PARAVIRT, 'serve', 'blk', '--socket-path', socketPath, '--image', image], { textStdout: true });
  let blk: BlkDriver | undefined;
  try {
    await serve.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
    blk = await BlkDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log }), { log });
    if (leadMs > 0) await sleep(leadMs);
    const data = new Uint8Array(4096).fill(0x5a);
    const timed = async (): Promise<number> => {
      const start = performance.now();
      await blk!.write(8, data);
      return performance.now() - start;
    };
    const context = { leadMs, file: DISK_DIR, load: loadavg()[0] };
    report('io-idle', leadMs > 0 ? 'serve_first_write_after_lead_ms' : 'serve_first_write_at_once_ms', await timed(), 'ms', context);
    report('io-idle', leadMs > 0 ? 'serve_second_write_after_lead_ms' : 'serve_second_write_at_once_ms', await timed(), 'ms', context);
  } finally {
    await blk?.close();
    await serve.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

export async function main(): Promise<void> {
  for (const { build, module } of BUILDS) {
    step(`the ${build} I/O threads`);
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), build, module], { stdio: ['ignore', 'inherit', 'inherit'] });
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    if (code !== 0) throw new Error(`measuring the ${build} I/O threads ended with exit code ${code}`);
  }
  step(`paravirt serve blk: the first write ${WARM_LEAD_MS} ms after a front-end connected`);
  await serveFirstWrite(WARM_LEAD_MS);
  step('paravirt serve blk: the first write as soon as a front-end connected');
  await serveFirstWrite(0);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await measure(process.argv[2], process.argv[3]);
