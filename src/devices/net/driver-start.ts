/**
 * Bringing a virtio-net device up from the driver's side (§3.1.1, §5.1.5): the features to ask
 * for, the queue count they imply (§5.1.2), and the configuration checks that decide the receive
 * buffer size (§5.1.6.3.1).
 */
import type { Logger } from 'pino';
import { DeviceId, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
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
  /** N of §5.1.2: pairs the device has queues for. */
  readonly pairs: number;
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
  // The queue count depends on what will be negotiated (§5.1.2), so work it out first, as
  // start() will; §3.1.1 step 4 lets a driver read the configuration space before accepting.
  const predicted = (await transport.deviceFeatures()) & (wanted | featureBit(Feature.VERSION_1));
  const has = (bit: number): boolean => hasFeature(predicted, bit);
  let pairs = 1;
  if (has(NetFeature.MQ)) {
    const raw = await transport.readConfig(NET_CONFIG.offset.maxVirtqueuePairs, 2);
    pairs = raw[0] | (raw[1] << 8);
    if (pairs < 1 || pairs > VQ_PAIRS_MAX) throw new Error(`net: the device reports max_virtqueue_pairs ${pairs}, outside 1..${VQ_PAIRS_MAX}`);
  }
  const core = await VirtioDriver.start(transport, {
    name: 'net',
    deviceId: DeviceId.NET,
    features: wanted,
    queues: 2 * pairs + (has(NetFeature.CTRL_VQ) ? 1 : 0),
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
    return { core, cfg, pairs, rxBufferSize, inbox };
  } catch (err) {
    await core.close();
    throw err;
  }
}
