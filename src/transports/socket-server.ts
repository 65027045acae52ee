/**
 * The listening side every socket transport shares: it owns the Unix socket a client connects to
 * (a path it binds, or a listening socket inherited as a descriptor, per vhost-user.rst "Backend
 * program conventions", which QEMU's vfio-user client follows too) and serves one client at a
 * time: further connections wait in the listener's backlog until the current one ends, and the
 * next is served by the same device (a restarted or reconnecting QEMU).
 */
import { fstatSync, lstatSync, rmSync } from 'node:fs';
import type { Logger } from 'pino';
import { type Watcher, watch } from '../native/readiness.ts';
import { UnixListener, type UnixSocket } from '../native/unix-socket.ts';

/** Where to listen: a socket path to bind, or an inherited listening socket. */
export type Listen = { readonly socketPath: string } | { readonly fd: number };

/** A socket path that cannot be listened on; the message is one sentence naming it. */
export class SocketPathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SocketPathError';
  }
}

/**
 * Bind `path`, replacing a stale socket left by an earlier run (but never any other kind of
 * file: a typo must not delete someone's data).
 */
export function bindPath(path: string): UnixListener {
  let existing: ReturnType<typeof lstatSync> | undefined;
  try {
    existing = lstatSync(path);
  } catch {
    existing = undefined;
  }
  if (existing !== undefined) {
    if (!existing.isSocket()) throw new SocketPathError(`socket path ${path} exists and is not a socket`);
    rmSync(path);
  }
  try {
    return UnixListener.listen(path);
  } catch (err) {
    throw new SocketPathError(`cannot listen on socket path ${path}: ${(err as Error).message}`);
  }
}

/** An inherited descriptor (--fd) that must be a socket; whether it listens shows at accept. */
export function adoptFd(fd: number): UnixListener {
  let isSocket: boolean;
  try {
    isSocket = fstatSync(fd).isSocket();
  } catch {
    throw new SocketPathError(`--fd ${fd} is not an open descriptor`);
  }
  if (!isSocket) throw new SocketPathError(`--fd ${fd} is not a socket`);
  return UnixListener.fromFd(fd);
}

/** One client's connection, as the server needs to know it. */
export interface ClientSession {
  /** Settles when the client has gone and the session has cleaned up. */
  readonly ended: Promise<void>;
  /** End the session (requests in flight complete first). */
  close(): Promise<void>;
}

export class OneClientServer<S extends ClientSession> {
  private watcher: Watcher | undefined;
  private current: S | undefined;
  private closing: Promise<void> | undefined;
  private failure: Error | undefined;
  private resolveClosed!: (failure: Error | undefined) => void;
  /**
   * Resolves once the server has closed: undefined after close(), or the error that made it
   * stop by itself (the listening socket failed, e.g. an inherited descriptor that does not listen).
   */
  readonly closed: Promise<Error | undefined>;
  private readonly listener: UnixListener;

  /** `client` names a client in log lines: "front-end", "vfio-user client". */
  constructor(
    target: Listen,
    private readonly serve: (socket: UnixSocket, log: Logger) => S,
    private readonly client: string,
    private readonly log: Logger,
  ) {
    this.listener = 'socketPath' in target ? bindPath(target.socketPath) : adoptFd(target.fd);
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.watcher = watch(this.listener.fd, { readable: () => this.acceptNext() });
  }

  /** The client being served, if any (for tests and status). */
  get session(): S | undefined {
    return this.current;
  }

  /** Stop listening, end the current session (requests in flight complete first) and resolve. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.watcher?.close();
      this.watcher = undefined;
      await this.current?.close();
      this.listener.close();
      this.resolveClosed(this.failure);
    })();
    return this.closing;
  }

  /** The listener is readable: take one connection, or none while a session runs. */
  private acceptNext(): void {
    if (this.current !== undefined || this.closing !== undefined) return;
    let socket: UnixSocket | null;
    try {
      socket = this.listener.tryAccept();
    } catch (err) {
      // Polling is level-triggered: retrying a listener that fails would spin. Stop instead.
      this.failure = new SocketPathError(`the listening socket failed: ${(err as Error).message}`);
      this.log.error({ err: (err as Error).message }, `accepting a ${this.client} failed; no longer listening`);
      void this.close();
      return;
    }
    if (socket === null) return;
    // One client at a time: stop polling the listener so further connections wait in its backlog.
    this.watcher?.update({});
    const session = this.serve(socket, this.log.child({ session: socket.fd }));
    this.current = session;
    this.log.info(`${this.client} connected`);
    void session.ended.then(() => {
      this.current = undefined;
      this.log.info(`${this.client} disconnected`);
      if (this.closing === undefined) this.watcher?.update({ readable: () => this.acceptNext() });
    });
  }
}
