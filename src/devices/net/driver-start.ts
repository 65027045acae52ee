/**
 * Bringing a virtio-net device up from the driver's side (§3.1.1, §5.1.5): the features to ask
 * for, the queue count they imply (§5.1.2), and the configuration checks that decide the receive
 * buffer size (§5.1.6.3.1).
 */
import type { Logger } from 'pino';
import { DeviceId, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import { DEFAULT_MAX_REQUEST_QUEUES, VirtioDriver } from '../../virtio/driver-core.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { plainFrameLimit } from './offload.ts';
import { DEFAULT_MTU, MAX_GSO_FRAME, NET_CONFIG, NET_HDR_SIZE, NET_OFFLOAD_FEATURES, type NetConfig, NetFeature, VQ_PAIRS_MAX } from './wire.ts';

/** Every virtio-net feature this driver implements, and the ring features it can use. */
export const NET_DRIVER_FEATURES: bigint = [...Object.values(NetFeature)].reduce((acc, bit) => acc | featureBit(bit), FRAMEWORK_FEATURES);

export interface NetDriverOptions {
  /** Features to accept when offered (default NET_DRIVER_FEATURES); drop bits to refuse offloads. */
  readonly features?: bigint;
  /** Use a packed ring when the device offers one (default true). */
  readonly packed?: boolean;
  /**
   * Accept checksum and segmentation offloads when offered (default true). Without them every
   * frame travels complete: the device finishes partial checksums and drops GSO frames for us.
   */
  readonly offloads?: boolean;
  readonly queueSize?: number;
  /** Queue pairs to use from the start (default 1; more needs MQ). */
  readonly queuePairs?: number;
  /** Bytes per receive buffer, header included (default 2048 with MRG_RXBUF, else room for the largest frame). */
  readonly rxBufferSize?: number;
  /** Received frames kept for `receive()` (default 1024); more are dropped and counted. */
  readonly inbox?: number;
  /** The address to use; sent with MAC_ADDR_SET when the device supports it (default the device's, or random). */
  readonly mac?: string | Uint8Array;
  /**
   * Microseconds each queue keeps polling for used buffers after a completion before it sleeps
   * on the device's notification (default 0: never poll; request-queue.ts).
   */
  readonly pollMicros?: number;
  readonly log?: Logger;
}

const DEFAULT_INBOX = 1024;
const MERGEABLE_BUFFER = 2048;

/** A started device and what the driver built on it needs. */
export interface StartedDevice {
  readonly core: VirtioDriver;
  readonly cfg: NetConfig;
  /** Queue pairs set up: N of §5.1.2 (max_virtqueue_pairs), bounded by what the driver uses. */
  readonly pairs: number;
  /** The controlq's index, 2N (§5.1.2); set up only with VIRTIO_NET_F_CTRL_VQ. */
  readonly ctrlIndex: number;
  /** Bytes per receive buffer, header included. */
  readonly rxBufferSize: number;
  readonly inbox: number;
}

/** Initialize the device behind `transport` and check its configuration; the device is closed again on error. */
export async function startDevice(transport: DriverTransport, options: NetDriverOptions): Promise<StartedDevice> {
  const wanted =
    (options.features ?? NET_DRIVER_FEATURES) &
    ~(options.packed === false ? featureBit(Feature.RING_PACKED) : 0n) &
    ~(options.offloads === false ? NET_OFFLOAD_FEATURES : 0n);
  const asked = options.queuePairs ?? 1;
  if (!Number.isSafeInteger(asked) || asked < 1) throw new RangeError(`net: option queuePairs ${asked} is not a positive integer`);
  // N of §5.1.2 and the pairs set up, decided from the negotiated features and max_virtqueue_pairs.
  let devicePairs = 1;
  let pairs = 1;
  const core = await VirtioDriver.start(transport, {
    name: 'net',
    deviceId: DeviceId.NET,
    features: wanted,
    queues: async (plan) => {
      if (hasFeature(plan.features, NetFeature.MQ)) {
        const raw = await plan.readConfig(NET_CONFIG.offset.maxVirtqueuePairs, 2);
        devicePairs = raw[0] | (raw[1] << 8);
        // §5.1.4.2: the device MUST set 1..0x8000; anything else is a broken device.
        if (devicePairs < 1 || devicePairs > VQ_PAIRS_MAX) throw new Error(`net: the device reports max_virtqueue_pairs ${devicePairs}, outside 1..${VQ_PAIRS_MAX}`);
      }
      // The pairs this driver can use: a device offering 0x8000 gets rings for a handful, not
      // 65536 (or those asked for by queuePairs). §5.1.6.5.5: the driver uses n <= N pairs, and
      // the controlq stays at index 2N, past the pairs never set up.
      pairs = Math.min(devicePairs, Math.max(asked, DEFAULT_MAX_REQUEST_QUEUES));
      const indices = Array.from({ length: 2 * pairs }, (_, i) => i);
      return hasFeature(plan.features, NetFeature.CTRL_VQ) ? [...indices, 2 * devicePairs] : indices;
    },
    queueSize: options.queueSize,
    pollMicros: options.pollMicros,
    log: options.log,
  });
  try {
    const cfg = NET_CONFIG.decode(await core.readConfig(0, NET_CONFIG.size));
    const mtu = hasFeature(core.features, NetFeature.MTU) ? cfg.mtu : DEFAULT_MTU;
    if (mtu < 68) throw new Error(`net: the device reports an MTU of ${mtu}, below the minimum of 68`);
    const bigReceive = [NetFeature.GUEST_TSO4, NetFeature.GUEST_TSO6, NetFeature.GUEST_UFO].some((b) => hasFeature(core.features, b));
    const mergeable = hasFeature(core.features, NetFeature.MRG_RXBUF);
    // §5.1.6.3.1: without MRG_RXBUF a buffer holds a whole frame; with it, at least a header.
    const minimum = mergeable ? NET_HDR_SIZE : NET_HDR_SIZE + (bigReceive ? MAX_GSO_FRAME : plainFrameLimit(mtu));
    const rxBufferSize = options.rxBufferSize ?? (mergeable ? MERGEABLE_BUFFER : minimum);
    if (!Number.isSafeInteger(rxBufferSize) || rxBufferSize < minimum) {
      throw new RangeError(`net: rxBufferSize ${rxBufferSize} is below the ${minimum} bytes the negotiated features need`);
    }
    const inbox = options.inbox ?? DEFAULT_INBOX;
    if (!Number.isSafeInteger(inbox) || inbox < 1) throw new RangeError(`net: inbox ${inbox} is not a positive integer`);
    return { core, cfg, pairs, ctrlIndex: 2 * devicePairs, rxBufferSize, inbox };
  } catch (err) {
    await core.close();
    throw err;
  }
}
