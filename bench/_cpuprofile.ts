/**
 * Reads a V8 CPU profile (`node --cpu-prof`) and ranks functions by self time: the samples
 * taken while that function itself, not something it called, was on top of the stack.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join, relative } from 'node:path';

/** The parts of the .cpuprofile format (Chrome DevTools Profiler.Profile) that are read here. */
interface CpuProfile {
  readonly nodes: readonly {
    readonly id: number;
    readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  }[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export interface SelfTime {
  /** Function name and where it is defined, e.g. "readv (node:internal/fs/promises:701)". */
  readonly frame: string;
  /** Microseconds sampled with this function on top. */
  readonly micros: number;
  /** Share of the time the process was busy (idle samples excluded). */
  readonly share: number;
}

export interface ProfileSummary {
  /** Microseconds of the whole profile. */
  readonly totalMicros: number;
  /** Microseconds the process was not idle. */
  readonly busyMicros: number;
  readonly top: SelfTime[];
}

/** Samples of a thread waiting in epoll: the process had nothing to do. */
const IDLE = '(idle)';

function frameName(frame: CpuProfile['nodes'][number]['callFrame'], root: string): string {
  const name = frame.functionName === '' ? '(anonymous)' : frame.functionName;
  // No script: a V8 pseudo-frame like "(program)", or a function of Node's C++ bindings.
  if (frame.url === '') return name.startsWith('(') ? name : `${name} (native)`;
  const file = frame.url.startsWith('file://') ? relative(root, new URL(frame.url).pathname) : frame.url;
  // lineNumber is 0-based. tsx compiles each TypeScript file to one line, so for those a line
  // number would say nothing: the file and function name are what locate it.
  return frame.lineNumber > 0 ? `${name} (${file}:${frame.lineNumber + 1})` : `${name} (${file})`;
}

/** The `count` functions with the most self time in the profile at `path`; file names relative to `root`. */
export function summarizeCpuProfile(path: string, root: string, count: number): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const frameOf = new Map(profile.nodes.map((n) => [n.id, frameName(n.callFrame, root)]));
  const micros = new Map<string, number>();
  let total = 0;
  // timeDeltas[i] is the time before sample i; it is charged to sample i like DevTools does.
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0;
    const frame = frameOf.get(id) ?? '(unknown)';
    micros.set(frame, (micros.get(frame) ?? 0) + delta);
    total += delta;
  });
  const busy = total - (micros.get(IDLE) ?? 0);
  const top = [...micros]
    .filter(([frame]) => frame !== IDLE)
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([frame, us]) => ({ frame, micros: us, share: busy > 0 ? us / busy : 0 }));
  return { totalMicros: total, busyMicros: busy, top };
}

/**
 * The profile `node --cpu-prof --cpu-prof-dir=DIR` wrote for the main thread of process `pid`.
 * Node writes one profile per thread, named CPU.<date>.<time>.<pid>.<thread id>.<n>.cpuprofile;
 * thread 0 is the main one (the others are the tsx loader's and a back-end's I/O threads).
 */
export function mainThreadProfile(dir: string, pid: number): string {
  const main = readdirSync(dir).find((f) => f.startsWith('CPU.') && f.endsWith('.cpuprofile') && f.split('.')[3] === String(pid) && f.split('.')[4] === '0');
  if (main === undefined) throw new Error(`process ${pid} wrote no CPU profile of its main thread into ${dir} (did it exit cleanly?)`);
  return join(dir, main);
}

/** How InProcessProfiler names its files, apart from those `node --cpu-prof` writes (CPU.*) into the same directory. */
const PROFILE_PREFIX = 'in-process-';

/**
 * The V8 CPU profiler on this very process, for benchmarks whose code under test runs in the
 * benchmark's own process (a driver): the same profile `node --cpu-prof` writes, taken only
 * around the parts given to `around`, one file each in `dir`.
 */
export class InProcessProfiler {
  private constructor(
    private readonly session: Session,
    readonly dir: string,
  ) {}

  /** A profiler writing to `dir`, or undefined when `dir` is (profiling is off). */
  static async open(dir: string | undefined): Promise<InProcessProfiler | undefined> {
    if (dir === undefined) return undefined;
    mkdirSync(dir, { recursive: true });
    const session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    return new InProcessProfiler(session, dir);
  }

  /** Run `body` under the profiler and write its profile. */
  async around<T>(body: () => Promise<T>): Promise<T> {
    await this.session.post('Profiler.start');
    try {
      return await body();
    } finally {
      const { profile } = await this.session.post('Profiler.stop');
      // V8 charges the time from Profiler.start to the first sample to that sample: it was not sampled.
      if (profile.timeDeltas !== undefined && profile.timeDeltas.length > 0) profile.timeDeltas[0] = 0;
      writeFileSync(join(this.dir, `${PROFILE_PREFIX}${Date.now()}.cpuprofile`), JSON.stringify(profile));
    }
  }

  /** The `count` functions with the most self time over every profile written, as shares of the busy time. */
  summary(root: string, count: number): { frame: string; share: number; micros: number }[] {
    const totals = new Map<string, number>();
    let busy = 0;
    for (const file of readdirSync(this.dir).filter((f) => f.startsWith(PROFILE_PREFIX) && f.endsWith('.cpuprofile'))) {
      const summary = summarizeCpuProfile(join(this.dir, file), root, Number.MAX_SAFE_INTEGER);
      busy += summary.busyMicros;
      for (const entry of summary.top) totals.set(entry.frame, (totals.get(entry.frame) ?? 0) + entry.micros);
    }
    return [...totals]
      .sort((a, b) => b[1] - a[1])
      .slice(0, count)
      .map(([frame, micros]) => ({ frame, micros, share: busy > 0 ? micros / busy : 0 }));
  }

  close(): void {
    this.session.disconnect();
  }
}
