/**
 * The vhost-user front-end for a virtio-net back-end. A vhost-user-net back-end (DPDK's
 * net_vhost, Open vSwitch, snabb) moves packets and nothing else: it has no configuration space
 * and no control queue, which QEMU's virtio-net device provides itself. For such a back-end this
 * front-end plays that device model minimally: one queue pair, the ring and offload features the
 * back-end offers, and no control queue, so the driver picks its own MAC address and treats the
 * link as up (§5.1.5 without VIRTIO_NET_F_MAC and VIRTIO_NET_F_STATUS). Multiqueue is left out:
 * VIRTIO_NET_F_MQ needs the control queue (§5.1.3.1).
 *
 * A back-end that offers CONFIG (`paravirt serve net`) is a whole device with its own control
 * queue and is passed through unchanged.
 */
import { NET_LOCAL_MODEL } from '../../devices/net/descriptor.ts';
import { NET_CONFIG } from '../../devices/net/wire.ts';
import { DeviceId } from '../../virtio/constants.ts';
import { type FrontendOptions, type LocalDeviceModel, VhostUserFrontend } from './frontend.ts';

/** The device model for a vhost-user-net back-end without a configuration space. */
export const VHOST_USER_NET_MODEL: LocalDeviceModel = {
  ...NET_LOCAL_MODEL,
  // Nothing in it is read: MAC, STATUS, MQ, MTU and the rest are all withheld.
  config: new Uint8Array(NET_CONFIG.size),
};

/** Connect to a vhost-user-net back-end; hand the result to NetDriver.open. */
export function connectNet(socketPath: string, options: Omit<FrontendOptions, 'deviceId' | 'localModel'> = {}): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(socketPath, { ...options, deviceId: DeviceId.NET, localModel: VHOST_USER_NET_MODEL });
}
