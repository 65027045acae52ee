/**
 * The net driver over the vhost-user front-end transmitting 64-byte frames into DPDK's net_vhost
 * (testpmd rxonly), against DPDK's own virtio-user driver (testpmd txonly) into the same
 * net_vhost: the packet rate each reaches and their ratio. The drivers take turns on the one
 * socket, round after round, so load on the shared machine hits both alike; each reports its
 * median. net_vhost counts what arrives, so both are measured by the same counter.
 *
 * CPUs: net_vhost polls on CPU 1; the driver under test (this process, or virtio-user's
 * forwarding lcore) runs on CPU 0.
 *
 * Each ring layout runs in a process of its own, as DPDK's sender is a fresh process in every
 * round: a driver process uses one layout (VIRTIO_F_RING_PACKED is negotiated per device), and
 * one that ran the split ring first would measure the packed ring through call sites made
 * polymorphic by the split ring's classes (bench/ring.ts does the same for the same reason).
 *
 * With PARAVIRT_BENCH_CPU_PROF=DIR one more paravirt round per ring layout runs under the V8 CPU
 * profiler (the same profile `node --cpu-prof` writes, for these rounds only); the profiles are
 * written to DIR/split and DIR/packed and the functions with the most self time are reported per
 * layout.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { InProcessProfiler } from './_cpuprofile.ts';
import { BURST, FRAME_BYTES, POLL_MICROS, QUEUE_SIZE, startTxonlySender } from './_net-txonly-sender.ts';
import { report, step } from './_report.ts';
import { NetDriver } from '../src/devices/net/driver.ts';
import { connectNet } from '../src/transports/vhost-user/frontend-net.ts';
import { Feature, hasFeature } from '../src/virtio/constants.ts';
import { startTestpmd, type Testpmd } from '../test/lab/dpdk.ts';

const BENCH = 'frontend-net';
const WARMUP_SECONDS = 0.5;
const ROUND_SECONDS = 2;
const ROUNDS = 5;
const PROFILE_TOP = 12;
const LAYOUTS = ['split', 'packed'] as const;
/** Set (to split or packed) in the process that measures that one layout. */
const LAYOUT_ENV = 'PARAVIRT_BENCH_NET_LAYOUT';
/** 20 rounds of a few seconds, a testpmd start in half of them, with room for a busy machine. */
export const deadlineSeconds = 240;
const repo = fileURLToPath(new URL('..', import.meta.url));
const log = pino({ level: 'warn' });

interface Rate {
  readonly pps: number;
  /** This process's CPU time per packet (the paravirt side only). */
  readonly cpuMicrosPerPacket?: number;
}

/** Packets per second net_vhost counts over ROUND_SECONDS, after WARMUP_SECONDS of traffic. */
async function received(vhost: Testpmd): Promise<{ packets: number; seconds: number }> {
  await sleep(WARMUP_SECONDS * 1000);
  const before = (await vhost.portStats()).rxPackets;
  const start = process.hrtime.bigint();
  await sleep(ROUND_SECONDS * 1000);
  const after = (await vhost.portStats()).rxPackets;
  return { packets: after - before, seconds: Number(process.hrtime.bigint() - start) / 1e9 };
}

/**
 * One round of the paravirt net driver over the front-end: one sender writing frames into free
 * transmit buffers in place, BURST at a time with trySendBurst(), as txonly writes its burst of
 * mbufs and then hands them to tx_burst, waiting with whenWritable() when the ring is full,
 * until told to stop.
 */
async function paravirtRound(vhost: Testpmd, socketPath: string, packed: boolean): Promise<Rate> {
  step(`sending through paravirt's net driver (${packed ? 'packed' : 'split'} ring) into DPDK net_vhost`);
  const net = await NetDriver.open(await connectNet(socketPath, { queueSize: QUEUE_SIZE, log }), { packed, queueSize: QUEUE_SIZE, pollMicros: POLL_MICROS, log });
  try {
    if (hasFeature(net.features, Feature.RING_PACKED) !== packed) throw new Error(`net_vhost did not negotiate the ${packed ? 'packed' : 'split'} ring`);
    const sender = startTxonlySender(net);
    const cpu = process.cpuUsage();
    const sent = net.counters.txPackets;
    const { packets, seconds } = await received(vhost);
    const used = process.cpuUsage(cpu);
    const ours = net.counters.txPackets - sent;
    await sender.stop();
    return { pps: packets / seconds, cpuMicrosPerPacket: (used.user + used.system) / ours };
  } finally {
    await net.close();
  }
}

/**
 * One round of DPDK's virtio-user driver (testpmd txonly) on the same socket. net_vhost's
 * forwarding busy-polls CPU 1, where the sender's main lcore and EAL threads run: it is stopped
 * while the sender starts up and while it quits, and runs again for the next round (see "Why bench
 * net overran its deadline" in docs/performance.md).
 */
async function virtioUserRound(vhost: Testpmd, socketPath: string, packed: boolean): Promise<Rate> {
  const what = `DPDK txonly (${packed ? 'packed' : 'split'} ring) into DPDK net_vhost`;
  if (vhost.forwarding) await vhost.stop();
  step(`starting ${what}`);
  const sender = await startTestpmd({
    name: 'virtio-user',
    port: { kind: 'virtio-user', socketPath, packedVq: packed, queueSize: QUEUE_SIZE },
    forwardMode: 'txonly',
    txPacketBytes: FRAME_BYTES,
    lcores: { main: 1, forward: 0 },
  });
  try {
    await vhost.start();
    await sender.start();
    step(`waiting for ${what}`);
    const { packets, seconds } = await received(vhost);
    step(`stopping ${what}`);
    await sender.stop();
    return { pps: packets / seconds };
  } finally {
    if (vhost.forwarding) await vhost.stop();
    step(`quitting ${what}`);
    await sender.close();
    await vhost.start();
  }
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const round2 = (v: number): number => Math.round(v * 100) / 100;

/** Measure one ring layout in this process: DPDK net_vhost, then ROUNDS of each driver in turn. */
async function measure(packed: boolean): Promise<void> {
  const ring = packed ? 'packed' : 'split';
  const profileDir = process.env.PARAVIRT_BENCH_CPU_PROF;
  const profiler = await InProcessProfiler.open(profileDir === undefined ? undefined : join(profileDir, ring));
  // This process is the paravirt driver: on CPU 0, where virtio-user's forwarding lcore runs in its turn.
  execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-bench-net-'));
  const socketPath = join(dir, 'vhost.sock');
  step('starting DPDK net_vhost');
  const vhost = await startTestpmd({ name: 'net-vhost', port: { kind: 'vhost', socketPath }, forwardMode: 'rxonly', lcores: { main: 0, forward: 1 } });
  try {
    await vhost.start();
    const paravirt: Rate[] = [];
    const dpdk: Rate[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      paravirt.push(await paravirtRound(vhost, socketPath, packed));
      dpdk.push(await virtioUserRound(vhost, socketPath, packed));
    }
    // The profiler slows what it watches: its round is one more, not one of those measured.
    if (profiler !== undefined) await profiler.around(() => paravirtRound(vhost, socketPath, packed));
    const context = { ring, frame_bytes: FRAME_BYTES, queue_size: QUEUE_SIZE, burst: BURST, rounds: ROUNDS, round_seconds: ROUND_SECONDS, loadavg: loadavg()[0] };
    const paravirtPps = median(paravirt.map((r) => r.pps));
    const dpdkPps = median(dpdk.map((r) => r.pps));
    report(BENCH, `tx_64b_${ring}_paravirt_pps`, Math.round(paravirtPps), 'packets/s', {
      ...context,
      poll_us: POLL_MICROS,
      driver_cpu_us_per_packet: round2(median(paravirt.map((r) => r.cpuMicrosPerPacket ?? 0))),
    });
    report(BENCH, `tx_64b_${ring}_virtio_user_pps`, Math.round(dpdkPps), 'packets/s', context);
    report(BENCH, `tx_64b_${ring}_paravirt_over_virtio_user`, Number((paravirtPps / dpdkPps).toFixed(4)), 'ratio', {
      ...context,
      median_of_round_ratios: Number(median(paravirt.map((r, i) => r.pps / dpdk[i].pps)).toFixed(4)),
    });
  } finally {
    step('quitting DPDK net_vhost');
    await vhost.close();
    rmSync(dir, { recursive: true, force: true });
  }
  if (profiler !== undefined) reportProfile(profiler, ring);
}

/** Run this file again for one ring layout, its JSON lines passed through. */
function measureApart(ring: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], {
      env: { ...process.env, [LAYOUT_ENV]: ring },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`the ${ring} ring's process ended with ${signal ?? `code ${code}`}`))));
  });
}

export async function main(): Promise<void> {
  for (const ring of LAYOUTS) {
    step(`measuring the ${ring} ring in a process of its own`);
    await measureApart(ring);
  }
}

function reportProfile(profiler: InProcessProfiler, ring: string): void {
  // All of this layout's profiled rounds together: self time per function summed over them.
  profiler.close();
  profiler
    .summary(repo, PROFILE_TOP)
    .forEach(({ frame, share, micros }, rank) => report(BENCH, 'profile_self_paravirt', round2(100 * share), '% of busy', { ring, rank: rank + 1, frame, ms: Math.round(micros / 1000) }));
}

const only = process.env[LAYOUT_ENV];
if (only !== undefined) {
  if (!(LAYOUTS as readonly string[]).includes(only)) throw new Error(`${LAYOUT_ENV}=${only}: the layouts are ${LAYOUTS.join(' and ')}`);
  measure(only === 'packed').then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(`bench ${BENCH} (${only} ring): ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      process.exit(1);
    },
  );
}
