/**
 * QEMU as `paravirt run`'s child: started, stopped with SIGTERM (QEMU's own clean exit) and, when
 * it will not go, SIGKILL; when it ends by itself with a failure, its last lines of stderr say why.
 */
import { spawn, type ChildProcess } from 'node:child_process';

/** Lines of QEMU's stderr kept for the report of a failure. */
const TAIL_LINES = 20;
/** How long QEMU may take to exit after SIGTERM before it is killed. */
const STOP_GRACE_MS = 5000;

export interface QemuExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** stop() ended it, rather than the guest (power-off) or a failure. */
  readonly stopped: boolean;
  /** Its last lines of stderr. */
  readonly tail: string;
}

export class QemuProcess {
  readonly exited: Promise<QemuExit>;
  private readonly child: ChildProcess;
  private stopping = false;
  private lines: string[] = [];

  /** Start `argv`; QEMU's stderr goes to `onStderr` as it comes, and its tail is kept. */
  constructor(argv: readonly string[], onStderr: (text: string) => void) {
    this.child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let partial = '';
    this.child.stderr!.setEncoding('utf8').on('data', (text: string) => {
      onStderr(text);
      const lines = (partial + text).split('\n');
      partial = lines.pop() ?? '';
      this.lines.push(...lines);
      this.lines.splice(0, Math.max(0, this.lines.length - TAIL_LINES));
    });
    this.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null): void =>
        resolve({ code, signal, stopped: this.stopping, tail: [...this.lines, partial].join('\n').trim() });
      this.child.once('close', done);
      this.child.once('error', (err) => {
        this.lines.push(`cannot start ${argv[0]}: ${err.message}`);
        done(null, null);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Ask QEMU to exit (it closes its devices' sockets), kill it if it lingers; resolves once it is gone. */
  async stop(): Promise<QemuExit> {
    if (this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined) {
      this.stopping = true;
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_GRACE_MS);
      const exit = await this.exited;
      clearTimeout(timer);
      return exit;
    }
    return this.exited;
  }
}
