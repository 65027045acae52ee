/**
 * `npm run bench -- vhost-blk`: small-block read latency of `paravirt serve blk` next to
 * qemu-storage-daemon, the C vhost-user-blk back-end QEMU ships, both serving the same image
 * in tmpfs to the same Linux guest. One guest holds both disks (vhost-user-blk-pci), so boot,
 * guest kernel and TCG are shared; rounds alternate between the two and each side reports its
 * median. The guest times each run with its own clock, so boot and agent round trips are out.
 *
 *   qd1: one dd reading 4 KiB blocks with O_DIRECT, one request in flight at a time;
 *   qd4: four such readers at once (the guest has no fio), up to four requests in flight.
 *
 * O_DIRECT keeps the guest's page cache out: every block is a virtio-blk request to the back-end.
 * With PARAVIRT_BENCH_CPU_PROF=DIR the paravirt back-end runs under `node --cpu-prof` and its
 * busiest functions are reported too. Needs the lab (root).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootGuest, type Guest } from '../test/lab/guest.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';
import { qemuCommand, type QemuCommand } from '../test/lab/qemu.ts';
import { startStorageDaemon } from '../test/lab/qsd.ts';
import { mainThreadProfile, summarizeCpuProfile } from './_cpuprofile.ts';
import { report, step } from './_report.ts';

const BENCH = 'vhost-blk';
const MiB = 1024 * 1024;
const IMAGE_SIZE = 256 * MiB;
const BLOCK = 4096;
/** Reads per run: a couple of seconds under TCG, so /proc/uptime's 10 ms steps are noise below 1%. */
const READS = 8000;
const QD4_READERS = 4;
/** Runs per side per workload; the median is reported. Odd, so the median is one run. */
const ROUNDS = 7;
/** Profile entries reported when profiling. */
const PROFILE_TOP = 15;
/** Linux reports process CPU times in USER_HZ ticks, 100 per second on every architecture it ships. */
const USER_HZ = 100;
/** A guest boot and 30 runs of a few seconds each under TCG, with room for a busy machine. */
export const deadlineSeconds = 900;

const repo = dirname(dirname(fileURLToPath(import.meta.url)));

/** One back-end under test: its disk in the guest and its process on the host. */
interface Side {
  readonly name: 'paravirt' | 'qsd';
  /** PCI slot of its vhost-user-blk-pci device. */
  readonly slot: number;
  readonly socketPath: string;
  readonly pid: number;
  /** The guest's block device name (vda, vdb), found after boot. */
  disk: string;
}

interface Workload {
  readonly name: 'qd1' | 'qd4';
  script(disk: string): string;
}

const WORKLOADS: readonly Workload[] = [
  { name: 'qd1', script: (disk) => `dd if=/dev/${disk} of=/dev/null bs=${BLOCK} count=${READS} iflag=direct 2>/dev/null` },
  {
    name: 'qd4',
    // Each reader its own quarter of the blocks; `wait` returns only when all four are done.
    script: (disk) => {
      const share = READS / QD4_READERS;
      const readers = Array.from({ length: QD4_READERS }, (_, i) =>
        `dd if=/dev/${disk} of=/dev/null bs=${BLOCK} count=${share} skip=${i * share} iflag=direct 2>/dev/null &`);
      return `${readers.join(' ')} wait`;
    },
  },
];

export const median = (values: readonly number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

export const round2 = (x: number): number => Math.round(x * 100) / 100;

/**
 * CPU seconds (user + system) each thread of process `pid` has used so far, summed by thread
 * name, the main thread on its own: Node's event loop apart from its libuv pool and V8 helpers,
 * qemu-storage-daemon's main loop apart from its "worker" pool.
 */
function cpuByThread(pid: number): Map<string, number> {
  const byName = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // the thread ended between listing and reading
    }
    // The thread name (field 2) is in parentheses and may hold spaces: count fields after it.
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    // Node's pool threads carry the main thread's name: the main thread is told apart by its id.
    const name = tid === String(pid) ? `${comm} (main)` : comm;
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const seconds = (Number(fields[11]) + Number(fields[12])) / USER_HZ; // utime, stime: fields 14 and 15
    byName.set(name, (byName.get(name) ?? 0) + seconds);
  }
  return byName;
}

/** Seconds the guest's clock measured for `script` (/proc/uptime, 10 ms resolution). */
export async function guestSeconds(guest: Guest, script: string): Promise<number> {
  const out = await guest.check(
    `s=$(cut -d' ' -f1 /proc/uptime); ${script}; e=$(cut -d' ' -f1 /proc/uptime); echo "$s $e"`,
    { timeoutMs: 300_000 },
  );
  const [start, end] = out.trim().split(' ').map(Number);
  return end - start;
}

/** Whether `qemu` can open `path` (a chrooted QEMU sees only its chroot). */
function visibleTo(qemu: QemuCommand, path: string): boolean {
  try {
    qemu.toQemuPath(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * A new directory in tmpfs, and where the lab's QEMU programs find it: a chrooted QEMU cannot
 * see /dev/shm, so the directory is then bind-mounted under its share dir.
 */
export function tmpfsDir(qemu: QemuCommand): { dir: string; qemuDir: string; remove(): void } {
  const dir = mkdtempSync('/dev/shm/paravirt-vhost-blk-');
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  if (visibleTo(qemu, dir)) return { dir, qemuDir: dir, remove: removeDir };
  const mountPoint = mkdtempSync(join(qemu.shareDir, 'vhost-blk-'));
  try {
    execFileSync('mount', ['--bind', dir, mountPoint], { stdio: 'pipe' });
  } catch (error) {
    rmdirSync(mountPoint);
    removeDir();
    throw new Error(`cannot bind-mount ${dir} on ${mountPoint} for the chrooted QEMU: ${(error as Error).message}`, { cause: error });
  }
  return {
    dir,
    qemuDir: mountPoint,
    remove: () => {
      execFileSync('umount', [mountPoint], { stdio: 'pipe' });
      rmdirSync(mountPoint);
      removeDir();
    },
  };
}

/** A 256 MiB image of random data (1 MiB repeated): reads return real bytes, not holes. */
export function writeImage(path: string): void {
  const chunk = randomBytes(MiB);
  writeFileSync(path, new Uint8Array(0));
  for (let offset = 0; offset < IMAGE_SIZE; offset += MiB) writeFileSync(path, chunk, { flag: 'a' });
}

/** `paravirt serve blk` as a user runs it, optionally under the V8 CPU profiler. */
async function startParavirt(image: string, socketPath: string, profileDir: string | undefined): Promise<PeerProcess> {
  const node = profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`];
  const argv = [process.execPath, ...node, join(repo, 'bin/paravirt.js'), 'serve', 'blk', '--socket-path', socketPath, '--image', image, '--read-only'];
  const peer = new PeerProcess('paravirt serve blk', argv, { textStdout: true, cleanup: () => rmSync(socketPath, { force: true }) });
  // The log line follows the listen() call, so the socket accepts connections by then.
  await peer.waitForOutput(/back-end listening/);
  return peer;
}

/** The guest's disk behind each side's PCI slot. */
export async function findDisks(guest: Guest, sides: readonly { readonly name: string; readonly slot: number; disk: string }[]): Promise<void> {
  for (const side of sides) {
    const pci = `0000:00:${side.slot.toString(16).padStart(2, '0')}.0`;
    const disk = (await guest.check(`for b in /sys/block/vd*; do case $(readlink -f $b/device) in */${pci}/virtio*) echo \${b##*/};; esac; done`)).trim();
    if (!/^vd[a-z]+$/.test(disk)) throw new Error(`the guest has no disk at PCI slot ${pci} (${side.name}): found "${disk}"`);
    side.disk = disk;
  }
}

interface Sample {
  readonly iops: number;
  /** Host CPU time of the back-end process per read, in microseconds, in all and by thread name. */
  readonly cpuMicrosPerRead: number;
  readonly threadMicrosPerRead: Map<string, number>;
}

async function measure(guest: Guest, side: Side, workload: Workload): Promise<Sample> {
  const before = cpuByThread(side.pid);
  const seconds = await guestSeconds(guest, workload.script(side.disk));
  const threadMicrosPerRead = new Map<string, number>();
  for (const [name, cpu] of cpuByThread(side.pid)) {
    threadMicrosPerRead.set(name, ((cpu - (before.get(name) ?? 0)) * 1e6) / READS);
  }
  const cpuMicrosPerRead = [...threadMicrosPerRead.values()].reduce((a, b) => a + b, 0);
  return { iops: READS / seconds, cpuMicrosPerRead, threadMicrosPerRead };
}

/** Median per thread name over `runs`, threads under 1 µs per read left out. */
function threadMedians(runs: readonly Sample[]): Record<string, number> {
  const names = new Set(runs.flatMap((r) => [...r.threadMicrosPerRead.keys()]));
  const out: Record<string, number> = {};
  for (const name of names) {
    const m = median(runs.map((r) => r.threadMicrosPerRead.get(name) ?? 0));
    if (m >= 1) out[name] = round2(m);
  }
  return out;
}

/** Reports the busiest functions of the back-end's event loop. */
function reportProfile(profileDir: string, pid: number, context: Record<string, unknown>): void {
  const path = mainThreadProfile(profileDir, pid);
  const summary = summarizeCpuProfile(path, repo, PROFILE_TOP);
  report(BENCH, 'profile_busy_share_paravirt', round2((100 * summary.busyMicros) / summary.totalMicros), '%', { profile: path, ...context });
  summary.top.forEach((entry, rank) =>
    report(BENCH, 'profile_self_paravirt', round2(100 * entry.share), '% of busy', { rank: rank + 1, frame: entry.frame, ms: Math.round(entry.micros / 1000) }));
}

export async function main(): Promise<void> {
  const qemu = qemuCommand();
  const profileDir = process.env.PARAVIRT_BENCH_CPU_PROF;
  if (profileDir !== undefined) mkdirSync(profileDir, { recursive: true });
  const loadBefore = loadavg();
  const tmp = tmpfsDir(qemu);
  const peers: { stop(): Promise<unknown> }[] = [];
  let guest: Guest | undefined;
  try {
    const image = join(tmp.dir, 'disk.img');
    step('writing the image');
    writeImage(image);
    step('starting paravirt serve blk');

    const paravirt = await startParavirt(image, join(tmp.dir, 'paravirt.sock'), profileDir);
    peers.push(paravirt);
    // The image as the chrooted daemon sees it: the same tmpfs file through the bind mount.
    step('starting qemu-storage-daemon');
    const qsd = await startStorageDaemon({ image: join(tmp.qemuDir, 'disk.img'), socketPath: join(tmp.qemuDir, 'qsd.sock'), numQueues: 1, writable: false });
    peers.push(qsd);
    const pid = (p: PeerProcess): number => {
      if (p.child.pid === undefined) throw new Error(p.describe('starting'));
      return p.child.pid;
    };
    const sides: Side[] = [
      { name: 'paravirt', slot: 0x10, socketPath: join(tmp.qemuDir, 'paravirt.sock'), pid: pid(paravirt), disk: '' },
      { name: 'qsd', slot: 0x11, socketPath: qsd.socketPath, pid: pid(qsd.process), disk: '' },
    ];

    step('booting the guest');
    guest = await bootGuest({
      name: 'bench-vhost-blk',
      devices: sides.flatMap((s) => [
        '-chardev', `socket,id=${s.name},path=${qemu.toQemuPath(s.socketPath)}`,
        '-device', `vhost-user-blk-pci,chardev=${s.name},num-queues=1,addr=0x${s.slot.toString(16)}`,
      ]),
    });
    step('finding the disks in the guest');
    await findDisks(guest, sides);

    // One unmeasured run each: JIT warm-up, first touches of guest and host memory.
    for (const side of sides) {
      for (const w of WORKLOADS) {
        step(`warming up ${w.name} on ${side.name}`);
        await measure(guest, side, w);
      }
    }

    const samples = new Map<string, Sample[]>();
    for (let round = 0; round < ROUNDS; round++) {
      // Who goes first alternates, so neither side always follows the other's disturbance.
      const order = round % 2 === 0 ? sides : [...sides].reverse();
      for (const w of WORKLOADS) {
        for (const side of order) {
          const key = `${w.name} ${side.name}`;
          step(`measuring ${w.name} on ${side.name}, round ${round + 1} of ${ROUNDS}`);
          samples.set(key, [...(samples.get(key) ?? []), await measure(guest, side, w)]);
        }
      }
    }
    const loadAfter = loadavg();

    const context = {
      qsd: `qemu-storage-daemon ${qsd.version} (the lab's QEMU build${qemu.argv[0] === 'chroot' ? ', chrooted' : ''})`,
      qemu: qemu.version,
      guest: guest.release,
      image: `${IMAGE_SIZE / MiB} MiB in tmpfs`,
      reads: READS,
      rounds: ROUNDS,
      profiled: profileDir !== undefined,
      loadavg: { before: loadBefore.map(round2), after: loadAfter.map(round2) },
    };
    const runsOf = (w: Workload, side: Side['name']): Sample[] => samples.get(`${w.name} ${side}`) ?? [];
    for (const w of WORKLOADS) {
      const medians = { paravirt: 0, qsd: 0 };
      for (const side of sides) {
        const runs = runsOf(w, side.name);
        const iops = median(runs.map((r) => r.iops));
        medians[side.name] = iops;
        report(BENCH, `${w.name}_read_4k_iops_${side.name}`, Math.round(iops), 'IOPS', { runs: runs.map((r) => Math.round(r.iops)), ...context });
        report(BENCH, `${w.name}_cpu_us_per_read_${side.name}`, round2(median(runs.map((r) => r.cpuMicrosPerRead))), 'us', {
          runs: runs.map((r) => round2(r.cpuMicrosPerRead)),
          threads: threadMedians(runs),
        });
      }
      const ratioName = w.name === 'qd1' ? 'ratio_paravirt_over_qsd' : `${w.name}_ratio_paravirt_over_qsd`;
      // Each round's two runs follow each other within seconds, so their ratio is little moved by
      // load that comes and goes over minutes on a shared machine: its median is given beside.
      const qsdRuns = runsOf(w, 'qsd');
      const paired = runsOf(w, 'paravirt').map((p, i) => p.iops / qsdRuns[i].iops);
      report(BENCH, ratioName, round2(medians.paravirt / medians.qsd), 'x', {
        paired: round2(median(paired)),
        pairedRuns: paired.map(round2),
        loadavg: context.loadavg,
      });
    }

    step('shutting the guest down');
    await guest.shutdown();
    guest = undefined;
    step('stopping the back-ends');
    for (const peer of peers.splice(0).reverse()) await peer.stop();
    if (profileDir !== undefined) reportProfile(profileDir, pid(paravirt), { reads: READS, rounds: ROUNDS });
  } finally {
    step('shutting down what is left');
    await guest?.shutdown();
    for (const peer of peers.reverse()) await peer.stop();
    tmp.remove();
  }
}
