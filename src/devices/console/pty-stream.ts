/**
 * A pseudo-terminal's master side as a Node Duplex, for a console port's `pty` host end: reads
 * follow readiness and stop while the reader is full (the port's back-pressure reaches the
 * terminal program through its full output queue), writes wait for room instead of dropping.
 */
import { Duplex } from 'node:stream';
import { closeFd } from '../../native/fd.ts';
import { type Pty, openPty, readPty, writePty } from '../../native/pty.ts';
import { type Watcher, watch } from '../../native/readiness.ts';

const READ_BYTES = 64 * 1024;

export class PtyStream extends Duplex {
  readonly path: string;
  private readonly pty: Pty;
  private readonly watcher: Watcher;
  private reading = false;
  /** A write waiting for room: what is left of it and its callback. */
  private waiting: { bytes: Uint8Array; callback: (err?: Error | null) => void } | undefined;

  constructor() {
    super({ allowHalfOpen: true });
    this.pty = openPty();
    this.path = this.pty.path;
    this.watcher = watch(this.pty.master, {});
  }

  override _read(): void {
    this.reading = true;
    this.interest();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.waiting = { bytes: chunk, callback };
    this.flush();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.watcher.close();
    closeFd(this.pty.master);
    closeFd(this.pty.slave);
    callback(err);
  }

  private drainTerminal(): void {
    const buf = new Uint8Array(READ_BYTES);
    while (this.reading) {
      const n = readPty(this.pty.master, buf);
      if (n <= 0) break;
      this.reading = this.push(Buffer.from(buf.subarray(0, n)));
    }
    this.interest();
  }

  private flush(): void {
    const w = this.waiting;
    if (w === undefined) return;
    try {
      while (w.bytes.length > 0) {
        const n = writePty(this.pty.master, w.bytes);
        if (n < 0) break;
        w.bytes = w.bytes.subarray(n);
      }
    } catch (err) {
      this.waiting = undefined;
      w.callback(err as Error);
      return;
    }
    if (w.bytes.length === 0) {
      this.waiting = undefined;
      w.callback();
    }
    this.interest();
  }

  /** Poll for what is wanted now: reading while the reader takes more, writing while a write waits. */
  private interest(): void {
    if (this.watcher.closed) return;
    this.watcher.update({
      readable: this.reading ? () => this.drainTerminal() : undefined,
      writable: this.waiting !== undefined ? () => this.flush() : undefined,
    });
  }
}
