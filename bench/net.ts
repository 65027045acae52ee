/**
 * `npm run bench -- net`: packets per second a DPDK virtio-user driver (testpmd txonly) can put
 * through a vhost-user virtio-net back-end, for `paravirt serve net` next to DPDK's own net_vhost
 * PMD (testpmd rxonly), with 64-byte and 1500-byte frames. Both back-ends are up at once on the
 * same machine; rounds alternate between them and the median of each side is reported with the
 * ratio paravirt / DPDK.
 *
 * The rate is what the sender's port counted as transmitted over the measuring window: a frame
 * counts once the back-end has room for it, so the sender runs exactly as fast as the back-end
 * takes frames off the ring (txonly drops what does not fit and does not count it).
 *
 * Next to the rate, the CPU each back-end process used over the window per packet it took
 * (user + system time of all its threads, /proc): net_vhost's forwarding thread polls a whole
 * core whatever the rate, paravirt's event loop polls only while the ring has work.
 *
 * The paravirt back-end runs under `node --cpu-prof`; the functions with the most self time are
 * reported at the end. Two cores: the sender's forwarding thread on CPU 0, the back-end (the
 * node process, or net_vhost's forwarding thread) on CPU 1, which also holds the sender's main
 * lcore: nothing polls CPU 1 while a sender starts or quits.
 */
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTestpmd, type Testpmd } from '../test/lab/dpdk.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';
import { summarizeCpuProfile } from './_cpuprofile.ts';
import { cpuSeconds } from './_process-cpu.ts';
import { report, step } from './_report.ts';

const BENCH = 'net';
const FRAME_SIZES = [64, 1500] as const;
/** Rounds per side per frame size; odd, so the median is one round. */
const ROUNDS = 3;
/** Forwarding before the window opens (rings filled, JIT warm). */
const WARMUP_MS = 1000;
const WINDOW_MS = 3000;
const PROFILE_TOP = 10;
/** 12 rounds of about 6 s (a testpmd start, warm-up, window, quit) and the peers' start-up, with room for a busy machine. */
export const deadlineSeconds = 240;

const repo = dirname(dirname(fileURLToPath(import.meta.url)));

type SideName = 'paravirt' | 'dpdk';

interface Side {
  readonly name: SideName;
  readonly socketPath: string;
  /** The back-end's process, set once it runs. */
  pid?: number;
}

/** One round's result. */
interface Round {
  readonly pps: number;
  /** CPU microseconds the back-end process used per packet over the window. */
  readonly cpuMicrosPerPacket: number;
}

const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const round2 = (x: number): number => Math.round(x * 100) / 100;
const round3 = (x: number): number => Math.round(x * 1000) / 1000;
const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** `paravirt serve net` as a user runs it, on CPU 1, under the V8 CPU profiler. */
async function startParavirt(socketPath: string, profileDir: string): Promise<PeerProcess> {
  const argv = ['taskset', '-c', '1', process.execPath, '--cpu-prof', `--cpu-prof-dir=${profileDir}`, join(repo, 'bin/paravirt.js'), 'serve', 'net', '--socket-path', socketPath, '--log-level', 'warn'];
  const peer = new PeerProcess('paravirt serve net', argv, { textStdout: true, cleanup: () => rmSync(socketPath, { force: true }) });
  // Listening happens before the first event-loop turn; the socket file says it is there.
  for (let i = 0; i < 1000 && !statSync(socketPath, { throwIfNoEntry: false })?.isSocket(); i++) await delay(10);
  return peer;
}

/** One round: a fresh virtio-user sender on `side`; its transmit rate and the back-end's CPU per packet over the window. */
async function measure(side: Side, frameBytes: number, vhost: Testpmd): Promise<Round> {
  const pid = side.pid;
  if (pid === undefined) throw new Error(`the ${side.name} back-end has no process id (did it start?)`);
  const what = `DPDK txonly at ${frameBytes} B into ${side.name === 'dpdk' ? 'net_vhost' : 'paravirt'}`;
  step(`starting ${what}`);
  const sender = await startTestpmd({
    name: `sender-${side.name}`,
    port: { kind: 'virtio-user', socketPath: side.socketPath },
    forwardMode: 'txonly',
    txPacketBytes: frameBytes,
    lcores: { main: 1, forward: 0 },
  });
  try {
    // net_vhost's forwarding lcore busy-polls CPU 1 whenever it runs, and CPU 1 is where the
    // sender's main lcore and EAL threads live: it runs only from the sender's start to its stop,
    // never while the sender starts up or exits (see "Why bench net overran its deadline" in
    // docs/performance.md), nor while paravirt is measured.
    if (side.name === 'dpdk') {
      step('starting the forwarding of DPDK net_vhost');
      await vhost.start();
    }
    await sender.start();
    step(`waiting for ${what}`);
    await delay(WARMUP_MS);
    const before = await sender.portStats();
    const cpu0 = cpuSeconds(pid);
    const t0 = performance.now();
    await delay(WINDOW_MS);
    const after = await sender.portStats();
    const cpu = cpuSeconds(pid) - cpu0;
    const seconds = (performance.now() - t0) / 1000;
    step(`stopping ${what}`);
    await sender.stop();
    const packets = after.txPackets - before.txPackets;
    return { pps: packets / seconds, cpuMicrosPerPacket: packets > 0 ? (cpu * 1e6) / packets : Infinity };
  } finally {
    // A stopped sender leaves nothing on the ring that its quit waits for: the back-end need not poll.
    if (vhost.forwarding) {
      step('stopping the forwarding of DPDK net_vhost');
      await vhost.stop();
    }
    step(`quitting ${what}`);
    const exit = await sender.close();
    if (exit.signal) process.stderr.write(`bench ${BENCH}: ${sender.process.name} did not quit when asked; ended with ${exit.signal}\n`);
  }
}

function reportProfile(profileDir: string, context: Record<string, unknown>): void {
  const files = readdirSync(profileDir).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) throw new Error(`the paravirt back-end wrote no CPU profile into ${profileDir} (did it exit cleanly?)`);
  const summary = summarizeCpuProfile(join(profileDir, files[0]), repo, PROFILE_TOP);
  report(BENCH, 'profile_busy_share_paravirt', round2((100 * summary.busyMicros) / summary.totalMicros), '%', context);
  summary.top.forEach((entry, rank) =>
    report(BENCH, 'profile_self_paravirt', round2(100 * entry.share), '% of busy', { rank: rank + 1, frame: entry.frame, ms: Math.round(entry.micros / 1000) }));
}

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-bench-net-'));
  const profileDir = join(dir, 'profile');
  const loadBefore = loadavg();
  const sides: Side[] = [
    { name: 'paravirt', socketPath: join(dir, 'paravirt.sock') },
    { name: 'dpdk', socketPath: join(dir, 'vhost.sock') },
  ];
  step('starting paravirt serve net');
  const paravirt = await startParavirt(sides[0].socketPath, profileDir);
  sides[0].pid = paravirt.child.pid;
  let vhost: Testpmd | undefined;
  try {
    step('starting DPDK net_vhost');
    vhost = await startTestpmd({ name: 'net-vhost', port: { kind: 'vhost', socketPath: sides[1].socketPath }, forwardMode: 'rxonly', lcores: { main: 0, forward: 1 } });
    sides[1].pid = vhost.process.child.pid;
    const context = { rounds: ROUNDS, windowMs: WINDOW_MS, sender: 'testpmd net_virtio_user txonly, split ring, mrg_rxbuf' };
    for (const frameBytes of FRAME_SIZES) {
      const rounds: Record<SideName, Round[]> = { paravirt: [], dpdk: [] };
      for (let round = 0; round < ROUNDS; round++) {
        // Alternate which side goes first, so drift in the machine's load falls on both.
        const order = round % 2 === 0 ? sides : [...sides].reverse();
        for (const side of order) rounds[side.name].push(await measure(side, frameBytes, vhost));
      }
      const rates = { paravirt: rounds.paravirt.map((r) => r.pps), dpdk: rounds.dpdk.map((r) => r.pps) };
      const medians = { paravirt: median(rates.paravirt), dpdk: median(rates.dpdk) };
      for (const name of ['paravirt', 'dpdk'] as const) {
        report(BENCH, `tx_${frameBytes}b_pps_${name}`, Math.round(medians[name]), 'packets/s', { runs: rates[name].map(Math.round), ...context });
        const cpu = rounds[name].map((r) => r.cpuMicrosPerPacket);
        report(BENCH, `tx_${frameBytes}b_cpu_us_per_packet_${name}`, round3(median(cpu)), 'CPU µs/packet', { runs: cpu.map(round3), process: name === 'dpdk' ? 'testpmd net_vhost rxonly' : 'paravirt serve net' });
      }
      report(BENCH, `tx_${frameBytes}b_ratio_paravirt_over_dpdk`, round2(medians.paravirt / medians.dpdk), 'x', context);
    }
  } finally {
    step('quitting DPDK net_vhost');
    await vhost?.close();
    // SIGTERM: the back-end shuts down cleanly, which is when V8 writes the profile.
    step('stopping paravirt serve net');
    await paravirt.stop();
  }
  report(BENCH, 'loadavg_1min', round2(loadBefore[0]), 'load', { after: round2(loadavg()[0]) });
  try {
    reportProfile(profileDir, {});
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
