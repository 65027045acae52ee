/**
 * The host half of a device, as an ops table in the manner of kvmtool: a device type implements
 * VirtioDevice; transports (mmio, pci, vfio-user, vhost-user) drive it through the same calls,
 * so a device never knows which transport serves it. DeviceState (device-state.ts) holds what
 * every transport shares (status, features, queue set-up, configuration generation) and calls
 * these; a device serves each queue with a QueueServer (serve.ts).
 */
import type { Logger } from 'pino';
import type { DeviceCounters } from './counters.ts';
import type { FeatureRequirement } from './features.ts';
import type { GuestMemory } from './memory.ts';
import type { DeviceQueue } from './queue.ts';

/** What an activated device may use: negotiated state and the ways to signal the driver. */
export interface DeviceContext {
  readonly memory: GuestMemory;
  /** Features the driver accepted (§2.2), VERSION_1 included. */
  readonly features: bigint;
  /** Queue `index` as the driver set it up, or undefined when the driver did not enable it. */
  queue(index: number): DeviceQueue | undefined;
  /** Used-buffer notification for queue `index` (§2.3.2); call when publish() returned true. */
  notifyQueue(index: number): void;
  /** The device changed its configuration space: new generation, configuration change notification (§2.5.1). */
  configChanged(): void;
  /**
   * The driver broke a rule on queue `index` (a VirtqueueError): the device enters
   * DEVICE_NEEDS_RESET, notifies a configuration change and logs one line (§2.1.2).
   * The queue is not used again until reset; other queues and devices keep running.
   */
  fail(index: number, err: Error): void;
  readonly log: Logger;
  /** The device's counters (VirtioDevice.counters), which queue servers and event queues bump. */
  readonly counters: DeviceCounters;
  /**
   * How long a queue server keeps polling a ring that had work before it sleeps on the driver's
   * notification, in microseconds (ServingOptions.pollMicros); absent or 0, it never polls.
   */
  readonly pollMicros?: number;
}

/**
 * How whoever runs a device (`paravirt serve`, an embedding program) wants its queues served,
 * whatever the device type and transport.
 */
export interface ServingOptions {
  /**
   * Poll a ring for this many microseconds after the last request it brought, with the driver's
   * notifications off, before re-enabling them and sleeping (0 or absent: never poll).
   */
  readonly pollMicros?: number;
}

export interface VirtioDevice {
  /** §5 device ID. */
  readonly deviceId: number;
  /** Short name for logs, e.g. "blk". */
  readonly name: string;
  /** Number of queues offered. */
  readonly numQueues: number;
  /** Largest queue size the device accepts. */
  readonly maxQueueSize: number;
  /** Largest size of queue `index` where it is smaller than maxQueueSize (a control queue, say). */
  queueMaxSize?(index: number): number;
  /** Features offered: device-specific bits and the ring features it supports (VERSION_1 is implied). */
  readonly features: bigint;
  /**
   * The device type's feature dependencies (§5.x "Feature bit requirements"): FEATURES_OK is
   * refused for a driver that accepts a feature without what it requires (§2.2.1).
   */
  readonly featureRequirements?: readonly FeatureRequirement[];
  /** Names of the device-specific feature bits, for log lines. */
  readonly featureNames?: Readonly<Record<number, string>>;
  /** What the device counted since it was made, across resets and reconnects. */
  readonly counters: DeviceCounters;
  /** Device configuration space (§4.x "device-specific configuration"), little-endian, owned by the device. */
  readonly config: Uint8Array;
  /** The driver wrote [offset, offset+length) of the configuration space (already stored in `config`). */
  configWritten?(offset: number, length: number): void;
  /**
   * A GPU back-end's display socket (vhost-user GPU_SET_SOCKET): the stream on which the device
   * sends what its scanouts show to the front-end (QEMU's vhost-user-gpu.rst). The device owns
   * the descriptor from then on; a device without a display does not implement this.
   */
  displaySocket?(fd: number): void;
  /**
   * A driver is on its way: a front-end connected (vhost-user, vfio-user) or the device was put
   * on a bus a driver probes (mmio). Start now what the first request would otherwise wait for
   * (a disk's I/O thread), since a driver sends its first request right after DRIVER_OK. May be
   * called again for each connection; the device keeps what it started until it closes.
   */
  prepare?(): void;
  /** DRIVER_OK was set: start serving (§3.1.1). */
  activate(ctx: DeviceContext): void;
  /** The driver notified queue `index` (§2.3.3 / a kick). */
  queueNotify(index: number): void;
  /**
   * Queue `index` is about to stop (vhost-user GET_VRING_BASE, a front-end leaving) or to pause
   * while guest memory changes, and the transport waits for every chain popped from it: give back
   * now, unused (DeviceQueue.unpop), the buffers the device holds until some later event (the
   * balloon's statistics buffer, §5.5.6.3; receive buffers a waiting frame does not fit yet). A
   * paused queue is kicked when it runs again.
   */
  queueStopping?(index: number): void;
  /**
   * Device reset (§2.4): forget queues and context. Requests still in flight must complete
   * without touching guest memory again; QueueServer and the retired DeviceContext see to that
   * for requests it served.
   */
  reset(): void;
}
