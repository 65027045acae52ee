/**
 * The guest half of a device sees its device through a DriverTransport: mmio in-process, virtio-pci
 * over qtest, or a vhost-user front-end. Control-path calls are asynchronous because some
 * transports reach the device over a socket; the data path (notify) is fire-and-forget.
 */
import type { GuestMemory } from './memory.ts';
import type { QueueAddresses } from './queue.ts';

/** Guest memory the driver may hand to the device: rings, request headers, data buffers. */
export interface DmaAllocator {
  /** Guest-physical address of `bytes` free bytes aligned to `align` (a power of two), or undefined when exhausted. */
  alloc(bytes: number, align: number): number | undefined;
  free(addr: number): void;
}

export interface InterruptHandlers {
  /** A used-buffer notification for queue `index`. */
  queue(index: number): void;
  /** A configuration change notification (§2.5.1), also how DEVICE_NEEDS_RESET is signalled. */
  config(): void;
}

export interface DriverTransport {
  readonly memory: GuestMemory;
  readonly dma: DmaAllocator;
  deviceId(): Promise<number>;
  deviceFeatures(): Promise<bigint>;
  setDriverFeatures(features: bigint): Promise<void>;
  getStatus(): Promise<number>;
  setStatus(status: number): Promise<void>;
  /** Writes 0 to status and waits until the device reads back 0 (§2.4). */
  reset(): Promise<void>;
  configGeneration(): Promise<number>;
  readConfig(offset: number, length: number): Promise<Uint8Array>;
  writeConfig(offset: number, data: Uint8Array): Promise<void>;
  numQueues(): Promise<number>;
  /** Largest size queue `index` accepts, 0 when the queue does not exist. */
  queueMaxSize(index: number): Promise<number>;
  /** Tell the device where queue `index` lives and enable it (§4.2.3.2 / §4.1.5.1.3). */
  enableQueue(index: number, size: number, addrs: QueueAddresses): Promise<void>;
  /** Available-buffer notification for queue `index`. */
  notify(index: number): void;
  /** Where interrupts go; set once by the driver. */
  setInterruptHandlers(handlers: InterruptHandlers): void;
  close(): Promise<void>;
}
