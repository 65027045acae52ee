/**
 * A vhost-user back-end process's listening side: one front-end at a time on a Unix socket
 * (socket-server.ts), each served by a BackendConnection over the same device. When a front-end
 * goes away the device is reset and the next connection is served.
 */
import type { Logger } from 'pino';
import type { VirtioDevice } from '../../virtio/device.ts';
import { type Listen, OneClientServer } from '../socket-server.ts';
import type { VhostUserServing } from './backend.ts';
import { BackendConnection } from './backend-connection.ts';

export class BackendServer extends OneClientServer<BackendConnection> {
  static listen(device: VirtioDevice, target: Listen, log: Logger, serving: VhostUserServing = {}): BackendServer {
    return new BackendServer(target, (socket, sessionLog) => new BackendConnection(socket, device, sessionLog, serving), 'front-end', log);
  }
}
