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
import { NET_OFFLOAD_FEATURES } from '../../devices/net/driver.ts';
import { NET_CONFIG, NetFeature } from '../../devices/net/wire.ts';
import { DeviceId, featureBit } from '../../virtio/constants.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { type FrontendOptions, type LocalDeviceModel, VhostUserFrontend } from './frontend.ts';

/**
 * What a data-path-only back-end decides: ring layout and notification features, the checksum
 * and segmentation offloads (the back-end fills and reads virtio_net_hdr) and mergeable receive
 * buffers (it fills num_buffers). CTRL_GUEST_OFFLOADS is a control-queue command, so it stays out.
 */
export const NET_DATA_PATH_FEATURES: bigint =
  FRAMEWORK_FEATURES | (NET_OFFLOAD_FEATURES & ~featureBit(NetFeature.CTRL_GUEST_OFFLOADS)) | featureBit(NetFeature.MRG_RXBUF);

/** The device model for a vhost-user-net back-end without a configuration space. */
export const VHOST_USER_NET_MODEL: LocalDeviceModel = {
  features: NET_DATA_PATH_FEATURES,
  // Nothing in it is read: MAC, STATUS, MQ, MTU and the rest are all withheld.
  config: new Uint8Array(NET_CONFIG.size),
  queues: 2,
};

/** Connect to a vhost-user-net back-end; hand the result to NetDriver.open. */
export function connectNet(socketPath: string, options: Omit<FrontendOptions, 'deviceId' | 'localModel'> = {}): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(socketPath, { ...options, deviceId: DeviceId.NET, localModel: VHOST_USER_NET_MODEL });
}
