/**
 * A listening server for one device over either socket transport: vhost-user (the VMM runs the
 * virtio transport, the back-end the device) or vfio-user (the back-end is the whole virtio-pci
 * function). The transport's modules are imported only when a server of that kind is wanted.
 */
import type { Logger } from 'pino';
import type { VirtioDevice } from '../virtio/device.ts';
import type { VhostUserServing } from './vhost-user/backend.ts';
import type { ClientSession, Listen, OneClientServer } from './socket-server.ts';

export type SocketTransport = 'vhost-user' | 'vfio-user';

/** Either transport's server: one client at a time on a listening socket. */
export type DeviceServer = OneClientServer<ClientSession>;

export type ListenDevice = (device: VirtioDevice, target: Listen, log: Logger) => DeviceServer;

/**
 * How to serve a device over `transport`, its queues served as `serving` says (`offerConfig`
 * concerns vhost-user only: over vfio-user the configuration space is always the back-end's).
 */
export async function deviceServer(transport: SocketTransport, serving: VhostUserServing = {}): Promise<ListenDevice> {
  if (transport === 'vfio-user') {
    const { VfioUserServer } = await import('./vfio-user/server.ts');
    const { VirtioPciFunction } = await import('./pci-device/virtio-pci.ts');
    return (device, target, log) => VfioUserServer.listen(new VirtioPciFunction(device, log, serving), target, log);
  }
  const { BackendServer } = await import('./vhost-user/backend-server.ts');
  return (device, target, log) => BackendServer.listen(device, target, log, serving);
}
