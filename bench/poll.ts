/**
 * `npm run bench -- poll`: what the poll budget (`paravirt serve --poll-us`) buys and costs. For
 * each budget, `paravirt serve blk` serves a raw file on tmpfs to paravirt's blk driver over the
 * vhost-user front-end (as bench/frontend.ts): 4 KiB random reads at queue depth 32 for a few
 * seconds, then the driver stays connected and quiet. Reported per budget: the IOPS while busy,
 * the back-end's CPU per read while busy, and its CPU while quiet (a percentage of one core, from
 * /proc; 1 % is 10 ms per second, the kernel's tick).
 */
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { report, step } from './_report.ts';
import { randomIo } from '../src/cli/blk-workload.ts';
import { BlkDriver } from '../src/devices/blk/driver.ts';
import { DEFAULT_POLL_MICROS } from '../src/devices/host-options.ts';
import { VhostUserFrontend } from '../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../src/virtio/constants.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';

const PARAVIRT = fileURLToPath(new URL('../bin/paravirt.js', import.meta.url));
const DISK_BYTES = 64 * 1024 * 1024;
const BLOCK = 4096;
const DEPTH = 32;
const BUSY_SECONDS = 3;
const QUIET_SECONDS = 4;
/** Budgets compared: never poll, the default, and a long one. */
const BUDGETS = [0, DEFAULT_POLL_MICROS, 1000];
const USER_HZ = 100;
const log = pino({ level: 'warn' });
const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** CPU seconds (user + system, all threads) process `pid` has used so far. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / USER_HZ; // utime, stime: fields 14 and 15
}

async function measure(dir: string, image: string, pollUs: number): Promise<void> {
  const socketPath = join(dir, `poll-${pollUs}.sock`);
  step(`starting paravirt serve blk --poll-us ${pollUs}`);
  const serve = new PeerProcess(
    'paravirt serve blk',
    [process.execPath, PARAVIRT, 'serve', 'blk', '--socket-path', socketPath, '--image', image, '--read-only', '--poll-us', String(pollUs)],
    { textStdout: true },
  );
  let blk: BlkDriver | undefined;
  try {
    await serve.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
    const pid = serve.child.pid!;
    step(`reading through paravirt serve blk --poll-us ${pollUs}`);
    blk = await BlkDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log }), { log });
    await randomIo(blk, { depth: DEPTH, blockSize: BLOCK, seconds: 1 }); // warm-up
    const busyStart = cpuSeconds(pid);
    const busy = await randomIo(blk, { depth: DEPTH, blockSize: BLOCK, seconds: BUSY_SECONDS });
    const busyCpu = cpuSeconds(pid) - busyStart;
    step(`staying connected and quiet with --poll-us ${pollUs}`);
    await delay(200); // the poll budget (at most 1 ms here) runs out
    const quietStart = cpuSeconds(pid);
    const t0 = performance.now();
    await delay(QUIET_SECONDS * 1000);
    const quietPercent = (100 * (cpuSeconds(pid) - quietStart)) / ((performance.now() - t0) / 1000);
    const context = { pollUs, block: BLOCK, depth: DEPTH, busySeconds: BUSY_SECONDS, quietSeconds: QUIET_SECONDS, loadavg: loadavg()[0] };
    report('poll', `read_4k_qd${DEPTH}_iops_poll_${pollUs}us`, Math.round(busy.iops), 'IOPS', {
      ...context,
      backend_cpu_us_per_read: Number(((busyCpu * 1e6) / busy.ops).toFixed(1)),
    });
    report('poll', `idle_cpu_poll_${pollUs}us`, Number(quietPercent.toFixed(2)), '% of a core', context);
  } finally {
    await blk?.close();
    await serve.stop();
  }
}

export async function main(): Promise<void> {
  const dir = mkdtempSync('/dev/shm/paravirt-bench-poll-');
  try {
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(DISK_BYTES).fill(0xa5));
    for (const budget of BUDGETS) await measure(dir, image, budget);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
