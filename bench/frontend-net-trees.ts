/**
 * The net driver of several source trees side by side: rounds of bench/frontend-net.ts's paravirt
 * sender (64-byte frames into DPDK's net_vhost, 2 s each), one tree after another, each round a
 * fresh process, for comparing a change with the tree before it on a machine whose speed drifts
 * within minutes (docs/performance.md, "How often a driver publishes"). Each tree reports the
 * median CPU time per packet and the median, over rounds, of its ratio to the first tree's round
 * next to it: the paired ratio is what to read.
 *
 *     PARAVIRT_BENCH_TREES=/path/to/before,/path/to/after PARAVIRT_BENCH_NET_LAYOUT=packed \
 *       npm run bench -- frontend-net-trees
 *
 * A tree is a checkout of this repository (a `git worktree`), with node_modules and
 * bench/_net-txonly-sender.ts: each round runs the driver and the sender of its tree.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { report, step } from './_report.ts';
import { startTestpmd, type Testpmd } from '../test/lab/dpdk.ts';

const BENCH = 'frontend-net-trees';
const trees = (process.env.PARAVIRT_BENCH_TREES ?? '').split(',').filter((t) => t !== '');
const layout = process.env.PARAVIRT_BENCH_NET_LAYOUT ?? 'packed';
const rounds = Number(process.env.PARAVIRT_BENCH_ROUNDS ?? 6);
/** A round takes about 4 s (start, connect, 0.5 s warm-up, 2 s, close); a busy machine, twice that. */
export const deadlineSeconds = 60 + Math.max(1, trees.length) * (Number.isInteger(rounds) ? rounds : 6) * 10;

interface Round {
  readonly pps: number;
  readonly cpuMicrosPerPacket: number;
}

function runRound(tree: string, socketPath: string): Promise<Round> {
  const script = fileURLToPath(new URL('_frontend-net-tree-round.ts', import.meta.url));
  const env = { ...process.env, PARAVIRT_TREE: tree, PARAVIRT_SOCKET: socketPath, PARAVIRT_BENCH_NET_LAYOUT: layout };
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', 'tsx', script], { env }, (err, stdout, stderr) => {
      if (err) reject(new Error(`the round of ${tree} failed: ${stderr.trim() || err.message}`));
      else resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '') as Round);
    });
  });
}

const median = (values: readonly number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

export async function main(): Promise<void> {
  if (trees.length === 0) throw new Error('PARAVIRT_BENCH_TREES: give the source trees to compare, comma-separated');
  for (const tree of trees) {
    if (!existsSync(join(tree, 'src/devices/net/driver.ts')) || !existsSync(join(tree, 'bench/_net-txonly-sender.ts'))) {
      throw new Error(`PARAVIRT_BENCH_TREES: ${tree} is not a paravirt source tree with bench/_net-txonly-sender.ts`);
    }
  }
  if (layout !== 'split' && layout !== 'packed') throw new Error(`PARAVIRT_BENCH_NET_LAYOUT=${layout}: the layouts are split and packed`);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`PARAVIRT_BENCH_ROUNDS=${process.env.PARAVIRT_BENCH_ROUNDS}: a whole number of rounds, 1 or more`);
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-bench-trees-'));
  const socketPath = join(dir, 'vhost.sock');
  step('starting DPDK net_vhost');
  const vhost: Testpmd = await startTestpmd({ name: 'net-vhost', port: { kind: 'vhost', socketPath }, forwardMode: 'rxonly', lcores: { main: 0, forward: 1 } });
  const results = new Map<string, Round[]>(trees.map((t) => [t, []]));
  try {
    for (let r = 0; r < rounds; r++) {
      for (const tree of trees) {
        // Forwarding restarted for every front-end: once, net_vhost left a driver that connected
        // just after another had gone without an answer to VHOST_USER_SET_VRING_KICK.
        await vhost.start();
        step(`round ${r + 1} of ${rounds}: ${tree} (${layout} ring)`);
        results.get(tree)!.push(await runRound(tree, socketPath));
        await vhost.stop();
      }
    }
  } finally {
    step('quitting DPDK net_vhost');
    await vhost.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const first = results.get(trees[0])!;
  for (const tree of trees) {
    const mine = results.get(tree)!;
    report(BENCH, `tx_64b_${layout}_driver_cpu_us_per_packet`, Number(median(mine.map((x) => x.cpuMicrosPerPacket)).toFixed(4)), 'µs', {
      tree,
      pps: Math.round(median(mine.map((x) => x.pps))),
      over_first_tree_paired: Number(median(mine.map((x, i) => x.cpuMicrosPerPacket / first[i].cpuMicrosPerPacket)).toFixed(4)),
      rounds,
      loadavg: loadavg()[0],
    });
  }
}
