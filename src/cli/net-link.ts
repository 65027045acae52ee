/**
 * A virtio-net device served on a vhost-user socket path, with a link a program can take down
 * and bring up so that the guest sees it.
 *
 * A front-end that reads the device's configuration space (the CONFIG protocol feature) learns
 * the link from VIRTIO_NET_S_LINK_UP (§5.1.4.2), which NetDevice.setLink maintains. QEMU's
 * virtio-net does not: it keeps the link state itself and ignores the back-end's configuration
 * space, taking its link down when the back-end's socket closes and up when it connects again
 * (`-chardev socket,...,reconnect-ms=N`). So while the link is down this also ends the session
 * and stops listening, and bringing the link up listens again.
 */
import type { Logger } from 'pino';
import type { NetDevice } from '../devices/net/device.ts';
import { BackendServer } from '../transports/vhost-user/backend-server.ts';
import { ProtocolFeature } from '../transports/vhost-user/constants.ts';

export class LinkedNetServer {
  private server: BackendServer | undefined;

  constructor(
    readonly device: NetDevice,
    readonly socketPath: string,
    private readonly log: Logger,
  ) {
    this.server = device.link ? BackendServer.listen(device, { socketPath }, log) : undefined;
  }

  /** The server while the link is up. */
  get current(): BackendServer | undefined {
    return this.server;
  }

  /**
   * Take the link down or bring it up. Down, frames are dropped both ways; a front-end without
   * the CONFIG protocol feature is disconnected and cannot connect until the link is up again.
   */
  async setLink(up: boolean): Promise<void> {
    this.device.setLink(up);
    if (up) {
      this.server ??= BackendServer.listen(this.device, { socketPath: this.socketPath }, this.log);
      return;
    }
    const server = this.server;
    if (server === undefined || server.session?.backend.hasProtocolFeature(ProtocolFeature.CONFIG) === true) return;
    this.server = undefined;
    this.log.info({ socketPath: this.socketPath }, 'link down: the front-end is disconnected until the link is up');
    await server.close();
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    await server?.close();
  }
}
