/**
 * A vfio-user server process's listening side: it owns the Unix socket a client (QEMU's
 * vfio-user-pci) connects to and serves one client at a time. When a client goes away the
 * function is reset and the next connection is served by the same device; further connections
 * wait in the listener's backlog meanwhile.
 */
import type { Logger } from 'pino';
import { type Watcher, watch } from '../../native/readiness.ts';
import type { UnixListener, UnixSocket } from '../../native/unix-socket.ts';
import { SocketPathError, adoptFd, bindPath, type Listen } from '../vhost-user/backend-server.ts';
import { ClientConnection } from './connection.ts';
import type { PciEndpoint } from './session.ts';

export class VfioUserServer {
  private watcher: Watcher | undefined;
  private client: ClientConnection | undefined;
  private closing: Promise<void> | undefined;
  private failure: Error | undefined;
  private resolveClosed!: (failure: Error | undefined) => void;
  /** Resolves once closed: undefined after close(), or the error that stopped the listener. */
  readonly closed: Promise<Error | undefined>;

  private constructor(
    private readonly listener: UnixListener,
    private readonly endpoint: PciEndpoint,
    private readonly log: Logger,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.watcher = watch(listener.fd, { readable: () => this.acceptNext() });
  }

  static listen(endpoint: PciEndpoint, target: Listen, log: Logger): VfioUserServer {
    const listener = 'socketPath' in target ? bindPath(target.socketPath) : adoptFd(target.fd);
    return new VfioUserServer(listener, endpoint, log);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.watcher?.close();
      this.watcher = undefined;
      await this.client?.close();
      this.listener.close();
      this.resolveClosed(this.failure);
    })();
    return this.closing;
  }

  private acceptNext(): void {
    if (this.client !== undefined || this.closing !== undefined) return;
    let socket: UnixSocket | null;
    try {
      socket = this.listener.tryAccept();
    } catch (err) {
      this.failure = new SocketPathError(`the listening socket failed: ${(err as Error).message}`);
      this.log.error({ err: (err as Error).message }, 'accepting a vfio-user client failed; no longer listening');
      void this.close();
      return;
    }
    if (socket === null) return;
    this.watcher?.update({});
    const client = new ClientConnection(socket, this.endpoint, this.log.child({ client: socket.fd }));
    this.client = client;
    this.log.info('vfio-user client connected');
    void client.ended.then(() => {
      this.client = undefined;
      this.log.info('vfio-user client disconnected');
      if (this.closing === undefined) this.watcher?.update({ readable: () => this.acceptNext() });
    });
  }
}
