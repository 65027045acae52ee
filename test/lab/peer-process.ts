/**
 * A peer program the tests run beside themselves (QEMU, qemu-storage-daemon, testpmd): spawned
 * with its output collected, awaited by what it prints rather than by the clock, and always gone
 * afterwards — stopped by its owner, or killed when the test process exits whatever the reason.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Every peer still running; the exit hook below kills what a crashed test left behind. */
const running = new Set<PeerProcess>();
const killAll = (): void => {
  for (const peer of running) peer.kill();
};
process.on('exit', killAll);
// An interrupted run must not leave busy pollers behind: kill them, then let the signal do what it would have.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    killAll();
    process.kill(process.pid, signal);
  });
}

export interface PeerExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** How long a peer may take to do what it was asked before the test fails instead of hanging. */
export const PEER_DEADLINE_MS = 20_000;
/** After the peer's process has ended, how long its pipes may stay open (output still in flight). */
const STDIO_GRACE_MS = 1000;

export interface SpawnOptions {
  /** Collect stdout as text too (false when stdout carries a protocol the caller reads). */
  readonly textStdout: boolean;
  /** Removes what the peer leaves behind (sockets, runtime files); runs once, when it is gone. */
  readonly cleanup?: () => void;
}

export class PeerProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<PeerExit>;
  private text = '';
  private stdoutText = '';
  private exit: PeerExit | undefined;
  /** Set on 'exit': the process is gone, though its pipes may still be open. */
  private processExit: PeerExit | undefined;
  private readonly wake = new Set<() => void>();
  private cleanup: (() => void) | undefined;

  constructor(
    /** Short name for messages, e.g. "qemu-storage-daemon". */
    readonly name: string,
    argv: readonly string[],
    options: SpawnOptions,
  ) {
    const [file, ...args] = argv;
    this.child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.cleanup = options.cleanup;
    running.add(this);
    const collect = (chunk: Buffer, fromStdout: boolean): void => {
      const text = chunk.toString('utf8');
      this.text += text;
      if (fromStdout) this.stdoutText += text;
      for (const w of [...this.wake]) w();
    };
    this.child.stderr?.on('data', (chunk: Buffer) => collect(chunk, false));
    if (options.textStdout) this.child.stdout?.on('data', (chunk: Buffer) => collect(chunk, true));
    // A peer that dies makes writes to its stdin fail; the exit is what gets reported.
    this.child.stdin?.on('error', () => {});
    this.exited = new Promise((resolve) => {
      const done = (exit: PeerExit): void => {
        if (this.exit) return;
        this.exit = exit;
        running.delete(this);
        this.runCleanup();
        for (const w of [...this.wake]) w();
        resolve(exit);
      };
      // 'close' rather than 'exit': by then everything the peer printed has been collected. But
      // 'close' waits for every holder of the peer's pipes, and a process it started (or one that
      // inherited them) can hold them for good: once the peer itself is gone, its output gets a
      // bounded grace, then our ends are closed and the peer counts as gone.
      this.child.on('close', (code, signal) => done({ code, signal }));
      this.child.on('exit', (code, signal) => {
        this.processExit = { code, signal };
        for (const w of [...this.wake]) w();
        setTimeout(() => {
          if (this.exit) return;
          for (const stream of [this.child.stdin, this.child.stdout, this.child.stderr]) stream?.destroy();
          done({ code, signal });
        }, STDIO_GRACE_MS).unref();
      });
      this.child.on('error', (error) => {
        this.text += `\n${error.message}`;
        done({ code: null, signal: null });
      });
    });
  }

  /** Everything the peer printed so far (stderr, and stdout when collected), interleaved as it came. */
  get output(): string {
    return this.text;
  }

  /** What the peer printed on stdout so far (when collected): its answers, free of stderr's logging. */
  get stdout(): string {
    return this.stdoutText;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  /** One sentence for a failure: what the peer was doing and how it ended, with its output. */
  describe(what: string): string {
    const how = this.exit ? `exited (${this.exit.signal ?? `code ${this.exit.code}`})` : 'still running';
    const tail = this.text.trim().split('\n').slice(-15).join('\n');
    return `${this.name} ${how} while ${what}${tail ? `; its last output:\n${tail}` : ''}`;
  }

  /**
   * Resolves with the first match of `pattern` in stdout from offset `from` on.
   * Fails if the peer exits first or nothing matches within `deadlineMs` (a booting guest needs more).
   */
  waitForOutput(pattern: RegExp, from = 0, what = `printing ${pattern}`, deadlineMs = PEER_DEADLINE_MS): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const match = pattern.exec(this.stdoutText.slice(from));
        if (match) {
          finish();
          resolve(match);
        } else if (this.exit) {
          finish();
          reject(new Error(this.describe(what)));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(this.describe(`${what} (gave up after ${deadlineMs} ms)`)));
      }, deadlineMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.wake.delete(check);
      };
      this.wake.add(check);
      check();
    });
  }

  /** SIGKILL now, and clean up at once: for a test process on its way out, which cannot wait. */
  kill(): void {
    this.child.kill('SIGKILL');
    this.runCleanup();
  }

  private runCleanup(): void {
    const cleanup = this.cleanup;
    this.cleanup = undefined;
    cleanup?.();
  }

  /** Writes `text` to the peer's stdin. */
  send(text: string): void {
    this.child.stdin?.write(text);
  }

  /**
   * Ends the peer: `ask` requests a clean exit (e.g. writes "quit"), then SIGTERM, then SIGKILL,
   * each given `stepMs` to end the process. Resolves once the process is gone (its pipes closed, or
   * closed by us shortly after); a step that was not enough is noted in the peer's output, so a
   * later failure message shows it. A process still there `stepMs` after SIGKILL (stuck in the
   * kernel) is an error naming its state, never a wait without end.
   */
  async stop(ask?: () => void, stepMs = PEER_DEADLINE_MS / 4): Promise<PeerExit> {
    const steps: { readonly what: string; readonly run: () => void }[] = [
      ...(ask ? [{ what: 'asked to exit', run: ask }] : []),
      { what: 'sent SIGTERM', run: () => this.child.kill('SIGTERM') },
      { what: 'sent SIGKILL', run: () => this.child.kill('SIGKILL') },
    ];
    let previous: string | undefined;
    for (const step of steps) {
      if (this.gone) return this.exited;
      if (previous) this.text += `\n[${this.name} was still running ${stepMs} ms after it was ${previous}; ${step.what}]\n`;
      step.run();
      previous = step.what;
      await this.processGone(stepMs);
    }
    if (this.gone) return this.exited;
    throw new Error(`${this.name} (pid ${this.child.pid}) is still there ${stepMs} ms after SIGKILL: ${processState(this.child.pid)}`);
  }

  /** The process has ended (or never started), whether or not its pipes are closed yet. */
  private get gone(): boolean {
    return this.processExit !== undefined || this.exit !== undefined;
  }

  /** Resolves when the process has ended (or failed to start), or after `ms`, whichever comes first. */
  private processGone(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (!this.gone) return;
        clearTimeout(timer);
        this.wake.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.wake.delete(check);
        resolve();
      }, ms);
      this.wake.add(check);
    });
  }
}

/** What the kernel says of a process that outlived SIGKILL: its state letter and where it sleeps. */
function processState(pid: number | undefined): string {
  const read = (file: string): string | undefined => {
    try {
      return readFileSync(`/proc/${pid}/${file}`, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  const stat = read('stat');
  if (pid === undefined || stat === undefined) return 'no /proc entry left (reaped meanwhile?)';
  const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  return `state ${state}, waiting in ${read('wchan') || 'nothing'}`;
}
