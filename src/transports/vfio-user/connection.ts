/**
 * One vfio-user client on its socket: bytes in through the framer, each message handled by the
 * Session in order, replies out. Reading is bounded per wake-up, and stops while replies wait for
 * the socket to drain, so a client that floods requests without reading replies fills its own
 * buffers rather than this process's memory.
 */
import type { Logger } from 'pino';
import { closeAll } from '../../native/fd.ts';
import { type Watcher, watch } from '../../native/readiness.ts';
import { MAX_TRANSFER, type UnixSocket } from '../../native/unix-socket.ts';
import { MessageFramer } from './framer.ts';
import { MAX_MESSAGE_FDS } from './protocol.ts';
import { Session, type PciEndpoint } from './session.ts';

/** Reads per wake-up (polling is level-triggered: the rest comes next time). */
const READS_PER_WAKEUP = 16;

export class ClientConnection {
  private readonly framer = new MessageFramer();
  private readonly session: Session;
  private readonly watcher: Watcher;
  /** Replies the socket has not taken yet: bytes, and descriptors that go with their first byte. */
  private outgoing: { bytes: Uint8Array; fds: readonly number[] }[] = [];
  private finished = false;
  private resolveEnded!: () => void;
  readonly ended: Promise<void>;

  constructor(
    private readonly socket: UnixSocket,
    endpoint: PciEndpoint,
    private readonly log: Logger,
  ) {
    this.session = new Session(endpoint, log);
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    this.watcher = watch(socket.fd, { readable: () => this.readable(), error: (err) => this.end(`socket error: ${err.message}`) });
  }

  close(): Promise<void> {
    this.end(undefined);
    return this.ended;
  }

  private readable(): void {
    for (let reads = 0; reads < READS_PER_WAKEUP && !this.finished; reads++) {
      let got;
      try {
        got = this.socket.receive(MAX_TRANSFER, MAX_MESSAGE_FDS);
      } catch (err) {
        this.end(`receive failed: ${(err as Error).message}`);
        return;
      }
      if (got === null) break;
      if (this.outgoing.length > 0) break;
      if (got.bytes.length === 0) {
        closeAll(got.fds);
        this.end(undefined);
        return;
      }
      if (got.truncated || got.discardedFds > 0) {
        closeAll(got.fds);
        this.end(`the client sent more than ${MAX_MESSAGE_FDS} descriptors with one message`);
        return;
      }
      this.framer.push(got.bytes, got.fds);
      if (!this.handleComplete()) return;
    }
  }

  /** Handle every complete message; false once the connection ended. */
  private handleComplete(): boolean {
    // Replies still waiting for the socket: the next message waits for them (see flush).
    while (this.outgoing.length === 0) {
      const framed = this.framer.next();
      if ('needMore' in framed) return true;
      if ('fatal' in framed) {
        closeAll(framed.fds);
        this.end(framed.fatal);
        return false;
      }
      let outcome;
      try {
        outcome = this.session.handle(framed.message);
      } catch (err) {
        // A fault of this server, not the client's: this client is dropped, the process goes on.
        this.log.error({ err }, 'handling a vfio-user message failed');
        this.end('internal error');
        return false;
      }
      if (outcome !== undefined) this.send(outcome.reply, outcome.fds ?? []);
      if (this.finished) return false;
    }
    return true;
  }

  private send(bytes: Uint8Array, fds: readonly number[]): void {
    this.outgoing.push({ bytes, fds });
    if (!this.flush() && !this.finished) this.watcher.update({ writable: () => this.writable(), error: (err) => this.end(`socket error: ${err.message}`) });
  }

  /** The socket drained: send the rest, handle what was held back, then read again. */
  private writable(): void {
    if (!this.flush() || !this.handleComplete() || this.outgoing.length > 0) return;
    this.watcher.update({ readable: () => this.readable(), error: (err) => this.end(`socket error: ${err.message}`) });
  }

  /** Write what the socket takes; true once nothing waits. */
  private flush(): boolean {
    while (this.outgoing.length > 0 && !this.finished) {
      const head = this.outgoing[0];
      let n: number;
      try {
        n = this.socket.send(head.bytes, head.fds);
      } catch (err) {
        this.end(`send failed: ${(err as Error).message}`);
        return false;
      }
      if (n < head.bytes.length) {
        // The descriptors went with the first byte sent; the rest carries none.
        this.outgoing[0] = { bytes: head.bytes.subarray(n), fds: n > 0 ? [] : head.fds };
        return false;
      }
      this.outgoing.shift();
    }
    return !this.finished;
  }

  /** End the connection: `reason` is logged when it is the client's fault. */
  private end(reason: string | undefined): void {
    if (this.finished) return;
    this.finished = true;
    if (reason !== undefined) this.log.warn(`vfio-user client disconnected: ${reason}`);
    this.watcher.close();
    closeAll(this.framer.takeFds());
    this.session.close();
    this.socket.close();
    this.resolveEnded();
  }
}
