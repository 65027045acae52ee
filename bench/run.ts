/**
 * `npm run bench -- NAME [NAME ...]`: runs bench/NAME.ts, each of which prints JSON lines
 * {"bench","metric","value","unit"} on stdout. Benchmarks are scripts, never tests.
 *
 * Every benchmark ends. Each runs in a child process that leads a process group of its own, so
 * the peers it starts (testpmd, QEMU, `paravirt serve`) are in that group too, and under a
 * deadline: DEFAULT_DEADLINE_S, or the module's own `deadlineSeconds`. Past it, the benchmark
 * fails with one line naming the step it last announced (step() in _report.ts), and its group is
 * ended: SIGTERM first, on which the peers' exit hooks (test/lab/peer-process.ts) kill them and
 * remove their sockets and runtime files, then SIGKILL for anything left, which also reaches a
 * benchmark or a peer too busy to run a signal handler. The group is swept the same way after a
 * benchmark that ended by itself, and when `npm run bench` is interrupted.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

/** What a bench/NAME.ts module exports. */
interface Benchmark {
  main(): Promise<void>;
  /** Overall deadline in seconds, when DEFAULT_DEADLINE_S does not fit the benchmark. */
  readonly deadlineSeconds?: number;
}

/** What a benchmark's process tells run.ts (see step() in _report.ts). */
export type BenchMessage = { readonly step: string } | { readonly deadlineSeconds: number };

const DEFAULT_DEADLINE_S = 120;
/** Between SIGTERM and SIGKILL: enough for testpmd to quit and a back-end to write its profile. */
const GRACE_MS = 10_000;
const CHILD_FLAG = '--one';

const here = dirname(fileURLToPath(import.meta.url));
const self = fileURLToPath(import.meta.url);

/** In a benchmark's own process: run it, then exit, whatever handles it left open. */
async function runOne(name: string): Promise<void> {
  // run.ts gone (killed itself): nobody bounds this benchmark any more, so it ends now.
  process.on('disconnect', () => process.kill(process.pid, 'SIGTERM'));
  try {
    const mod = (await import(pathToFileURL(join(here, `${name}.ts`)).href)) as Benchmark;
    if (mod.deadlineSeconds !== undefined) process.send?.({ deadlineSeconds: mod.deadlineSeconds } satisfies BenchMessage);
    await mod.main();
  } catch (err) {
    console.error(`bench ${name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  }
  // Exit hooks kill any peer still running; an open handle cannot keep the benchmark alive.
  process.exit(0);
}

/** Signal every process of `child`'s group; false once the group is gone. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-child.pid!, signal);
    return true;
  } catch {
    return false;
  }
}

/** The running benchmark, for the interrupt handler. */
let current: { child: ChildProcess; end(why: string): void } | undefined;

/** Run benchmark `name` in its own process group under its deadline; resolves with whether it succeeded. */
function run(name: string): Promise<boolean> {
  return new Promise((resolve) => {
    const child = fork(self, [CHILD_FLAG, name], { detached: true, execArgv: process.execArgv });
    const started = performance.now();
    let step = 'starting';
    let deadlineSeconds = DEFAULT_DEADLINE_S;
    let failure: string | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    const end = (why: string): void => {
      if (failure !== undefined) return;
      failure = why;
      console.error(why);
      signalGroup(child, 'SIGTERM');
      killTimer = setTimeout(() => signalGroup(child, 'SIGKILL'), GRACE_MS);
    };
    let deadline: NodeJS.Timeout;
    const arm = (): void => {
      clearTimeout(deadline);
      const left = Math.max(0, started + deadlineSeconds * 1000 - performance.now());
      deadline = setTimeout(() => end(`bench ${name}: deadline ${deadlineSeconds} s passed while ${step}`), left);
    };
    arm();
    current = { child, end };
    child.on('message', (m: BenchMessage) => {
      if ('step' in m) step = m.step;
      else {
        deadlineSeconds = m.deadlineSeconds;
        arm();
      }
    });
    const settle = (ok: boolean): void => {
      clearTimeout(deadline);
      clearTimeout(killTimer);
      current = undefined;
      // Whatever the benchmark left behind in its group goes with it.
      signalGroup(child, 'SIGKILL');
      resolve(ok);
    };
    child.on('error', (err) => {
      console.error(`bench ${name}: cannot start its process: ${err.message}`);
      settle(false);
    });
    child.on('exit', (code, signal) => {
      if (failure === undefined && code !== 0) console.error(`bench ${name}: ended with ${signal ?? `exit code ${code}`} while ${step}`);
      settle(failure === undefined && code === 0);
    });
  });
}

async function runAll(): Promise<void> {
  const known = readdirSync(here)
    .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.startsWith('_'))
    .map((f) => f.slice(0, -3))
    .sort();
  const names = process.argv.slice(2);
  if (names.length === 0) {
    console.error(`usage: npm run bench -- NAME [NAME ...]; benchmarks: ${known.join(', ')}`);
    process.exit(2);
  }
  for (const name of names) {
    if (!known.includes(name)) {
      console.error(`unknown benchmark "${name}"; benchmarks: ${known.join(', ')}`);
      process.exit(2);
    }
  }
  // The benchmark's group is not the terminal's: an interrupt reaches it only through here.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (current === undefined) process.exit(130);
      current.end(`bench: interrupted (${signal})`);
      current.child.once('exit', () => process.exit(130));
    });
  }
  for (const name of names) {
    if (!(await run(name))) process.exit(1);
  }
}

if (process.argv[2] === CHILD_FLAG) await runOne(process.argv[3]);
else await runAll();
