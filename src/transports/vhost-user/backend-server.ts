/**
 * A vhost-user back-end process's listening side: it owns the Unix socket a front-end connects
 * to (a path it binds, or a listening socket inherited as a descriptor, per vhost-user.rst
 * "Backend program conventions") and serves one front-end at a time. When a front-end goes
 * away the device is reset and the next connection (a restarted or reconnecting QEMU) is
 * served by the same device.
 */
import { fstatSync, lstatSync, rmSync } from 'node:fs';
import type { Logger } from 'pino';
import { type Watcher, watch } from '../../native/readiness.ts';
import { UnixListener, type UnixSocket } from '../../native/unix-socket.ts';
import type { VirtioDevice } from '../../virtio/device.ts';
import { BackendConnection } from './backend-connection.ts';

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

export class BackendServer {
  private watcher: Watcher | undefined;
  private session: BackendConnection | undefined;
  private closing: Promise<void> | undefined;
  private failure: Error | undefined;
  private resolveClosed!: (failure: Error | undefined) => void;
  /**
   * Resolves once the server has closed: undefined after close(), or the error that made it
   * stop by itself (the listening socket failed, e.g. an inherited descriptor that does not listen).
   */
  readonly closed: Promise<Error | undefined>;

  private constructor(
    private readonly listener: UnixListener,
    private readonly device: VirtioDevice,
    private readonly log: Logger,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.watcher = watch(listener.fd, { readable: () => this.acceptNext() });
  }

  static listen(device: VirtioDevice, target: Listen, log: Logger): BackendServer {
    const listener = 'socketPath' in target ? bindPath(target.socketPath) : adoptFd(target.fd);
    return new BackendServer(listener, device, log);
  }

  /** The front-end being served, if any (for tests and status). */
  get connection(): BackendConnection | undefined {
    return this.session;
  }

  /** Stop listening, end the current session (requests in flight complete first) and resolve. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.watcher?.close();
      this.watcher = undefined;
      await this.session?.close();
      this.listener.close();
      this.resolveClosed(this.failure);
    })();
    return this.closing;
  }

  /** The listener is readable: take one connection, or none while a session runs. */
  private acceptNext(): void {
    if (this.session !== undefined || this.closing !== undefined) return;
    let socket: UnixSocket | null;
    try {
      socket = this.listener.tryAccept();
    } catch (err) {
      // Polling is level-triggered: retrying a listener that fails would spin. Stop instead.
      this.failure = new SocketPathError(`the listening socket failed: ${(err as Error).message}`);
      this.log.error({ err: (err as Error).message }, 'accepting a front-end failed; no longer listening');
      void this.close();
      return;
    }
    if (socket === null) return;
    // One front-end at a time: stop polling the listener so further connections wait in its backlog.
    this.watcher?.update({});
    const session = new BackendConnection(socket, this.device, this.log.child({ session: socket.fd }));
    this.session = session;
    this.log.info('front-end connected');
    void session.ended.then(() => {
      this.session = undefined;
      this.log.info('front-end disconnected');
      if (this.closing === undefined) this.watcher?.update({ readable: () => this.acceptNext() });
    });
  }
}
