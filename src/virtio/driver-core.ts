/**
 * The generic guest-driver core over any DriverTransport: device initialization (§3.1.1),
 * feature negotiation, ring allocation, configuration reads with the generation loop (§2.5.1),
 * interrupt dispatch, and DEVICE_NEEDS_RESET handling. A device driver (rng, blk, ...) starts
 * one, then talks to its queues through RequestQueue.
 */
import { pino } from 'pino';
import type { Logger } from 'pino';
import { DESC_SIZE, DeviceStatus, Feature, featureBit, hasFeature } from './constants.ts';
import type { DriverTransport } from './driver.ts';
import { checkImplementable, describeFeatures } from './features.ts';
import { RequestQueue, type QueueRequest } from './request-queue.ts';
import { allocateRing, createDriverQueue, isPackedRing, negotiatedQueueConfig, queueSizeError } from './ring.ts';
import type { IndirectTables } from './split-ring.ts';

export interface DriverOptions {
  /** Name for messages and logs, e.g. "rng". */
  readonly name: string;
  /** The §5 device ID this driver is for. */
  readonly deviceId: number;
  /**
   * Every feature the driver implements: its device-specific bits and the ring features it wants
   * when offered (any of features.ts FRAMEWORK_FEATURES). VERSION_1 is implied.
   * A reserved bit the framework does not implement is refused with an error naming it.
   */
  readonly features: bigint;
  /**
   * Queues to set up: a count n (queues 0..n-1) or the queue indices themselves (virtio-net's
   * controlq follows all N pairs, §5.1.2, though fewer pairs may be used). A function decides
   * from the negotiated features and the configuration space, read after FEATURES_OK and before
   * any ring exists (§3.1.1 step 7). The core sets up exactly these and never more: a device
   * claiming thousands of queues does not get a ring for each; the driver bounds what it asks.
   */
  readonly queues: QueueSelection | ((plan: QueuePlan) => QueueSelection | Promise<QueueSelection>);
  /** Largest queue size to use (default 256); the device's maximum caps it further. */
  readonly queueSize?: number;
  /**
   * Entries of the indirect table set aside per buffer when VIRTIO_F_INDIRECT_DESC is negotiated
   * (default 0: every buffer is a direct chain). Drivers whose requests span several segments
   * set it so that each request takes one ring slot.
   */
  readonly indirectSegments?: number;
  /**
   * Microseconds each queue keeps polling its used ring after a completion before it sleeps on
   * the device's notification again (default 0: never poll; see request-queue.ts).
   */
  readonly pollMicros?: number;
  readonly log?: Logger;
}

/** A queue count n (queues 0..n-1) or a list of queue indices. */
export type QueueSelection = number | readonly number[];

/** What a driver knows when it chooses its queues. */
export interface QueuePlan {
  /** The negotiated features. */
  readonly features: bigint;
  /** A consistent read of the configuration space (§2.5.1). */
  readConfig(offset: number, length: number): Promise<Uint8Array>;
  /** Queues the transport reports (QueueNumMax probing, num_queues of virtio-pci): a device's word, to bound by, never to trust. */
  deviceQueues(): Promise<number>;
}

/**
 * Request queues (or net queue pairs) a driver sets up by default, whatever more the device
 * offers. Linux takes one per CPU (virtio_blk init_vq, virtio_net); a driver here runs on one
 * event loop, so queues beyond a handful only spread requests without adding parallelism, while
 * each costs a ring of DMA memory. A caller wanting more asks for them explicitly.
 */
export const DEFAULT_MAX_REQUEST_QUEUES = 8;

/** Highest queue index the spec names: virtio-net's controlq at 2N with N up to 0x8000 (§5.1.2, §5.1.4.2). */
const MAX_QUEUE_INDEX = 0x10000;

/** The device asked for a reset (§2.1.2): requests pending at that moment fail with this. */
export class DeviceNeedsResetError extends Error {
  constructor(name: string) {
    super(`${name}: device needs reset (DEVICE_NEEDS_RESET); pending requests were failed`);
    this.name = 'DeviceNeedsResetError';
  }
}

const DEFAULT_QUEUE_SIZE = 256;
/** Generation changes a configuration read tolerates before giving up on a device that never settles. */
const MAX_CONFIG_RETRIES = 64;

export class VirtioDriver {
  private readonly configListeners: (() => void)[] = [];
  private closed = false;

  private constructor(
    readonly transport: DriverTransport,
    readonly name: string,
    /** The negotiated features. */
    readonly features: bigint,
    private readonly queues: readonly RequestQueue[],
    /** Guest memory the driver allocated for its queues, given back on close. */
    private readonly owned: readonly number[],
    readonly log: Logger,
  ) {}

  /** Initialize the device behind `transport` (§3.1.1) and return the running driver. */
  static async start(transport: DriverTransport, options: DriverOptions): Promise<VirtioDriver> {
    const { name } = options;
    const supported = options.features | featureBit(Feature.VERSION_1);
    checkImplementable(supported, `driver ${name}`);
    const log = (options.log ?? pino({ name: 'paravirt' })).child({ driver: name });

    // §4.2.3.1.1: identify the device before touching anything else; a device that is not ours is left alone.
    const id = await transport.deviceId();
    if (id !== options.deviceId) {
      throw new Error(`${name}: expected virtio device ID ${options.deviceId}, the device reports ${id}`);
    }
    // Steps 1-3: reset, ACKNOWLEDGE, DRIVER.
    await transport.reset();
    await transport.setStatus(DeviceStatus.ACKNOWLEDGE);
    let status: number = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER;
    await transport.setStatus(status);

    const owned: number[] = [];
    try {
      const features = await negotiate(transport, supported, name);
      status |= DeviceStatus.FEATURES_OK;
      const queues = await setUpQueues(transport, options, features, log, owned);
      const driver = new VirtioDriver(transport, name, features, queues, owned, log);
      transport.setInterruptHandlers({
        queue: (index) => queues[index]?.collect(),
        config: () => {
          driver.configInterrupt().catch((err: unknown) => log.error({ err }, `${name}: configuration interrupt failed`));
        },
      });
      // Step 8.
      await transport.setStatus(status | DeviceStatus.DRIVER_OK);
      return driver;
    } catch (err) {
      // §3.1.1: a driver that gives up sets FAILED; the error that made it give up is the one to report.
      await transport.setStatus(status | DeviceStatus.FAILED).catch(() => {});
      for (const addr of owned) transport.dma.free(addr);
      throw err;
    }
  }

  /** Queue `index` as a request/response API. */
  queue(index: number): RequestQueue {
    const q = this.queues[index];
    if (q === undefined) throw new RangeError(`${this.name}: there is no queue ${index} (the driver did not set it up)`);
    return q;
  }

  /** How many queues the driver set up. */
  get queueCount(): number {
    let n = 0;
    this.queues.forEach(() => n++);
    return n;
  }

  /** Listen for configuration changes (not DEVICE_NEEDS_RESET, which fails the queues instead). */
  onConfigChange(listener: () => void): void {
    this.configListeners.push(listener);
  }

  /**
   * Read [offset, offset+length) of the configuration space consistently: re-read until the
   * generation is the same before and after (§2.5.1).
   */
  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    return readConsistentConfig(this.transport, this.name, offset, length);
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    await this.transport.writeConfig(offset, data);
  }

  /** Reset the device, fail what is pending, and give back the ring memory. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      // Reset first: once it is done the device no longer writes the buffers of pending requests.
      await this.transport.reset();
    } finally {
      this.failAll(new Error(`${this.name}: driver closed`));
      for (const addr of this.owned) this.transport.dma.free(addr);
      await this.transport.close();
    }
  }

  private failAll(err: Error): void {
    // forEach skips the holes of queues not set up.
    this.queues.forEach((q) => q.fail(err));
  }

  /** §2.1.2: DEVICE_NEEDS_RESET arrives as a configuration change notification. */
  private async configInterrupt(): Promise<void> {
    if (this.closed) return;
    const status = await this.transport.getStatus();
    if (status & DeviceStatus.DEVICE_NEEDS_RESET) {
      this.log.warn(`${this.name}: device needs reset`);
      this.failAll(new DeviceNeedsResetError(this.name));
      return;
    }
    for (const listener of this.configListeners) listener();
  }
}

/** §2.5.1: re-read until the generation is the same before and after. */
async function readConsistentConfig(transport: DriverTransport, name: string, offset: number, length: number): Promise<Uint8Array> {
  for (let attempt = 0; attempt < MAX_CONFIG_RETRIES; attempt++) {
    const before = await transport.configGeneration();
    const data = await transport.readConfig(offset, length);
    if ((await transport.configGeneration()) === before) return data;
  }
  throw new Error(`${name}: the configuration generation kept changing over ${MAX_CONFIG_RETRIES} reads`);
}

/** The queue indices `options.queues` names, checked: distinct integers a transport can address. */
async function chooseQueues(transport: DriverTransport, options: DriverOptions, features: bigint): Promise<number[]> {
  const { name } = options;
  const plan: QueuePlan = {
    features,
    readConfig: (offset, length) => readConsistentConfig(transport, name, offset, length),
    deviceQueues: () => transport.numQueues(),
  };
  const selection = typeof options.queues === 'function' ? await options.queues(plan) : options.queues;
  if (typeof selection === 'number') {
    if (!Number.isSafeInteger(selection) || selection < 1 || selection > MAX_QUEUE_INDEX + 1) {
      throw new RangeError(`${name}: option queues ${selection} is not an integer from 1 to ${MAX_QUEUE_INDEX + 1}`);
    }
    return Array.from({ length: selection }, (_, i) => i);
  }
  const bad = selection.find((index, at) => !Number.isSafeInteger(index) || index < 0 || index > MAX_QUEUE_INDEX || selection.indexOf(index) !== at);
  if (selection.length === 0 || bad !== undefined) {
    throw new RangeError(`${name}: option queues [${selection.join(', ')}] is not a non-empty list of distinct queue indices 0..${MAX_QUEUE_INDEX}`);
  }
  return [...selection];
}

/** The largest size <= `limit` a ring can use: any for packed, a power of two for split (§2.7). */
function usableSize(limit: number, packed: boolean): number {
  return packed ? limit : 2 ** Math.floor(Math.log2(limit));
}

/**
 * §3.1.1 steps 4-6: accept only what both sides implement, set FEATURES_OK and check that it
 * stuck. Returns the negotiated features.
 */
async function negotiate(transport: DriverTransport, supported: bigint, name: string): Promise<bigint> {
  const offered = await transport.deviceFeatures();
  if (!hasFeature(offered, Feature.VERSION_1)) {
    throw new Error(`${name}: the device does not offer VERSION_1 (legacy devices are not supported)`);
  }
  const features = offered & supported;
  await transport.setDriverFeatures(features);
  await transport.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
  if (!((await transport.getStatus()) & DeviceStatus.FEATURES_OK)) {
    throw new Error(`${name}: the device refused features ${describeFeatures(features)} (FEATURES_OK did not stick)`);
  }
  return features;
}

/**
 * §3.1.1 step 7 / §4.2.3.2: allocate, place and enable each queue. Every DMA allocation is
 * recorded in `owned` as it is made, so a failure part-way can give it all back.
 */
async function setUpQueues(
  transport: DriverTransport,
  options: DriverOptions,
  features: bigint,
  log: Logger,
  owned: number[],
): Promise<RequestQueue[]> {
  const { name } = options;
  const packed = isPackedRing(features);
  const wanted = options.queueSize ?? DEFAULT_QUEUE_SIZE;
  const sizeError = queueSizeError(wanted, packed);
  if (sizeError !== undefined) throw new RangeError(`${name}: option queueSize: ${sizeError}`);
  const indirect = hasFeature(features, Feature.INDIRECT_DESC);
  const segments = indirect ? (options.indirectSegments ?? 0) : 0;
  if (!Number.isSafeInteger(segments) || segments < 0) {
    throw new RangeError(`${name}: option indirectSegments ${segments} is not a non-negative integer`);
  }
  const pollMicros = options.pollMicros ?? 0;
  if (!Number.isFinite(pollMicros) || pollMicros < 0) throw new RangeError(`${name}: option pollMicros ${pollMicros} is not a non-negative number`);
  const indices = await chooseQueues(transport, options, features);

  // Indexed by queue index; a queue the driver did not ask for is a hole.
  const queues: RequestQueue[] = [];
  for (const index of indices) {
    const max = await transport.queueMaxSize(index);
    if (max === 0) throw new Error(`${name}: the device has no queue ${index}`);
    const size = usableSize(Math.min(max, wanted), packed);
    const addrs = allocateRing(transport.dma, transport.memory, size, packed);
    if (addrs === undefined) throw new Error(`${name}: DMA memory exhausted allocating queue ${index} of size ${size}`);
    owned.push(addrs.desc, addrs.driver, addrs.device);
    let tables: IndirectTables | undefined;
    if (segments > 0) {
      const addr = transport.dma.alloc(size * segments * DESC_SIZE, 16);
      if (addr === undefined) throw new Error(`${name}: DMA memory exhausted allocating indirect tables of queue ${index}`);
      owned.push(addr);
      tables = { addr, maxSegments: segments };
    }
    const config = negotiatedQueueConfig(features, size, addrs);
    const queueName = `${name}.q${index}`;
    const ring = createDriverQueue<QueueRequest>(transport.memory, config, packed, queueName, tables);
    await transport.enableQueue(index, size, addrs);
    queues[index] = new RequestQueue(ring, queueName, () => transport.notify(index), log, { pollMicros });
  }
  return queues;
}
