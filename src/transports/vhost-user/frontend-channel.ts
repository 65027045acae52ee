/**
 * The front-end's end of the main vhost-user socket: requests go out one at a time, in order,
 * and each waits for its reply when it has one ("Communication": the front-end sends, the
 * back-end answers on the same socket, and nothing else arrives there).
 *
 * The back-end is not trusted. A reply to a request other than the one waiting, a message the
 * codec refuses, a reply that never comes within the deadline, or the socket closing: each ends
 * the channel, fails the request waiting and every later one with a VhostUserDisconnectedError
 * naming the reason, and tells the owner once (onClosed).
 */
import { closeAll } from '../../native/fd.ts';
import { type Watcher, watch } from '../../native/readiness.ts';
import type { UnixSocket } from '../../native/unix-socket.ts';
import { drainSocket } from './socket-drain.ts';
import { frontendRequestName } from './constants.ts';
import { type FrontendReplyMessage, type Outgoing, encodeMessage } from './messages.ts';
import { MessageReader } from './reader.ts';

/** The back-end is gone or broke the protocol; every request from then on fails with this. */
export class VhostUserDisconnectedError extends Error {
  constructor(reason: string) {
    super(`vhost-user back-end disconnected: ${reason}`);
    this.name = 'VhostUserDisconnectedError';
  }
}

/** The back-end answered a request with a non-zero REPLY_ACK or an error reply. */
export class VhostUserRefusedError extends Error {
  constructor(
    readonly request: number,
    detail: string,
  ) {
    super(`vhost-user back-end refused ${frontendRequestName(request)}: ${detail}`);
    this.name = 'VhostUserRefusedError';
  }
}

interface Waiting {
  readonly request: number;
  resolve(reply: FrontendReplyMessage): void;
  reject(err: Error): void;
}

export class FrontendChannel {
  private readonly reader = new MessageReader('frontend-replies');
  private readonly watcher: Watcher;
  private waiting: Waiting | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** The end of the previous request; the next one starts after it. */
  private tail: Promise<unknown> = Promise.resolve();
  private failure: VhostUserDisconnectedError | undefined;

  constructor(
    private readonly socket: UnixSocket,
    /** Longest wait for one reply before the back-end counts as hung. */
    private readonly replyTimeoutMs: number,
    /** Runs once, when the channel ends for any reason other than close(). */
    private readonly onClosed: (err: VhostUserDisconnectedError) => void,
  ) {
    this.watcher = watch(socket.fd, {
      readable: () => this.readable(),
      error: (err) => this.end(`socket error: ${err.message}`),
    });
  }

  get closed(): boolean {
    return this.failure !== undefined;
  }

  /** Why the channel ended, or undefined while it is open. */
  get error(): VhostUserDisconnectedError | undefined {
    return this.failure;
  }

  /**
   * Send `message` after every earlier request is done. With `reply`, resolves with the
   * back-end's reply (its descriptors, if any, already closed); otherwise once it is sent.
   */
  request(message: Outgoing, reply: true): Promise<FrontendReplyMessage>;
  request(message: Outgoing, reply: false): Promise<undefined>;
  request(message: Outgoing, reply: boolean): Promise<FrontendReplyMessage | undefined> {
    const run = this.tail.then(() => this.exchange(message, reply));
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Stop reading and close the socket; a request waiting fails. */
  close(): void {
    this.end('the front-end closed the connection', false);
    this.socket.close();
  }

  private exchange(message: Outgoing, reply: boolean): Promise<FrontendReplyMessage | undefined> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const encoded = encodeMessage('frontend-requests', message);
    let sent: number;
    try {
      sent = this.socket.send(encoded.bytes, encoded.fds);
    } catch (err) {
      this.end(`sending ${frontendRequestName(message.request)} failed: ${(err as Error).message}`);
      return Promise.reject(this.failure);
    }
    // Requests are at most a few hundred bytes on an otherwise idle socket: a short write means
    // the back-end has stopped reading, and half a message could never be taken back.
    if (sent !== encoded.bytes.length) {
      this.end(`the back-end does not read its socket (${frontendRequestName(message.request)} not sent)`);
      return Promise.reject(this.failure);
    }
    if (!reply) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      this.waiting = { request: message.request, resolve, reject };
      this.timer = setTimeout(
        () => this.end(`no reply to ${frontendRequestName(message.request)} within ${this.replyTimeoutMs} ms`),
        this.replyTimeoutMs,
      );
      // A reply may already be buffered (it arrived with an earlier read).
      this.dispatch();
    });
  }

  private readable(): void {
    const drained = drainSocket(this.socket, this.reader);
    if (typeof drained === 'object') {
      this.end(drained.failed);
      return;
    }
    if (drained === 'hung up') {
      this.end('the back-end closed the connection');
      return;
    }
    this.dispatch();
  }

  /** Hand the buffered reply, if complete, to the request waiting for it. */
  private dispatch(): void {
    if (this.failure !== undefined) return;
    const next = this.reader.next();
    if (next.type === 'need-more') return;
    if (next.type === 'error') {
      closeAll(next.error.fds);
      this.end(`it sent a malformed message: ${next.error.message}`);
      return;
    }
    const m = next.message;
    // No reply of this protocol that the front-end asks for carries a descriptor it uses.
    closeAll(m.fds);
    const waiting = this.waiting;
    if (waiting === undefined || waiting.request !== m.request) {
      const expected = waiting === undefined ? 'nothing' : `a reply to ${frontendRequestName(waiting.request)}`;
      this.end(`it sent a reply to ${frontendRequestName(m.request)} while ${expected} was expected`);
      return;
    }
    this.waiting = undefined;
    clearTimeout(this.timer);
    waiting.resolve(m);
  }

  private end(reason: string, notify = true): void {
    if (this.failure !== undefined) return;
    this.failure = new VhostUserDisconnectedError(reason);
    clearTimeout(this.timer);
    this.watcher.close();
    closeAll(this.reader.takePendingFds());
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.reject(this.failure);
    if (notify) this.onClosed(this.failure);
  }
}
