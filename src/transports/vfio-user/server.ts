/**
 * A vfio-user server process's listening side: it owns the Unix socket a client (QEMU's
 * vfio-user-pci) connects to and serves one client at a time. When a client goes away the
 * function is reset and the next connection is served by the same device; further connections
 * wait in the listener's backlog meanwhile (socket-server.ts).
 */
import type { Logger } from 'pino';
import { type Listen, OneClientServer } from '../socket-server.ts';
import { ClientConnection } from './connection.ts';
import type { PciEndpoint } from './session.ts';

export class VfioUserServer extends OneClientServer<ClientConnection> {
  static listen(endpoint: PciEndpoint, target: Listen, log: Logger): VfioUserServer {
    return new VfioUserServer(target, (socket, sessionLog) => new ClientConnection(socket, endpoint, sessionLog), 'vfio-user client', log);
  }
}
