/**
 * Host side of the guest agent (scripts/lab/guest/agent.sh), spoken over the guest's second
 * 8250 serial port. A request is the line "SEQ BASE64(script)"; the answer is
 *   @@paravirt-result SEQ CODE \n BASE64(stdout) \n BASE64(stderr) \n
 * Requests go one at a time: the guest reads a raw tty and must never have its input buffer
 * overrun, and the agent runs one script at a time anyway.
 */
import type { Socket } from 'node:net';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout exactly as the guest produced it (stdout is its UTF-8 decoding). */
  stdoutBytes: Buffer;
}

/** Longest script accepted: the guest's shell reads the request line byte by byte. */
const MAX_SCRIPT_BYTES = 256 * 1024;

const READY = '@@paravirt-ready ';
const RESULT = '@@paravirt-result ';

interface Waiting { seq: number; resolve(r: RunResult): void; reject(e: Error): void }

export class AgentClient {
  /** The guest kernel release, once the agent has said it is ready. */
  readonly ready: Promise<string>;
  private buffer = '';
  private seq = 0;
  private waiting: Waiting | undefined;
  /** Lines of the answer being read: header, stdout, stderr. */
  private answer: string[] = [];
  private queue: Promise<unknown> = Promise.resolve();
  private closedError: Error | undefined;

  constructor(private readonly socket: Socket) {
    let markReady!: (release: string) => void;
    let failReady!: (e: Error) => void;
    this.ready = new Promise((resolve, reject) => {
      markReady = resolve;
      failReady = reject;
    });
    // Callers that never await `ready` must not see an unhandled rejection when QEMU dies.
    this.ready.catch(() => undefined);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl).replace(/\r$/, '');
        this.buffer = this.buffer.slice(nl + 1);
        if (line.startsWith(READY)) markReady(line.slice(READY.length).trim());
        else this.onLine(line);
      }
    });
    const fail = (err: Error): void => {
      this.closedError ??= err;
      failReady(err);
      this.waiting?.reject(err);
      this.waiting = undefined;
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('the guest agent connection closed (QEMU exited?)')));
  }

  /** Runs `script` with /bin/sh in the guest; rejects only if the channel fails or times out. */
  run(script: string, timeoutMs: number): Promise<RunResult> {
    const encoded = Buffer.from(script, 'utf8').toString('base64');
    if (encoded.length > MAX_SCRIPT_BYTES) {
      return Promise.reject(new Error(`a guest script may be at most ${MAX_SCRIPT_BYTES} bytes once base64-encoded; this one is ${encoded.length}`));
    }
    const next = this.queue.then(() => this.send(encoded, timeoutMs));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private send(encoded: string, timeoutMs: number): Promise<RunResult> {
    if (this.closedError) return Promise.reject(this.closedError);
    const seq = ++this.seq;
    return new Promise<RunResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`the guest did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting = {
        seq,
        resolve: (r) => { clearTimeout(timer); resolve(r); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
      this.socket.write(`${seq} ${encoded}\n`);
    });
  }

  private onLine(line: string): void {
    if (this.answer.length === 0) {
      if (!line.startsWith(RESULT)) return; // noise before the first answer, e.g. the blank line before "ready"
      this.answer.push(line);
      return;
    }
    this.answer.push(line);
    if (this.answer.length < 3) return;
    const [header, out, err] = this.answer;
    this.answer = [];
    const [seqText, codeText] = header.slice(RESULT.length).trim().split(' ');
    const w = this.waiting;
    // An answer to a request that already timed out is dropped; the next one is matched by SEQ.
    if (!w || Number(seqText) !== w.seq) return;
    this.waiting = undefined;
    const stdoutBytes = Buffer.from(out, 'base64');
    w.resolve({ code: Number(codeText), stdout: stdoutBytes.toString('utf8'), stderr: Buffer.from(err, 'base64').toString('utf8'), stdoutBytes });
  }
}
