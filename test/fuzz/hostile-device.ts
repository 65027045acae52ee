/**
 * A device that lies to its driver: a DriverTransport played in-process by the fuzzer, over guest
 * memory with canaries around it. It offers whatever identity, features, queue sizes and
 * configuration space the case says, and answers the driver's buffers either honestly (through
 * the device-side ring code, so a driver that breaks a ring rule is caught by the same checks a
 * paravirt device makes) or with raw used-ring contents no device may write: ids out of range or
 * not in flight, lengths past the buffer, used indices jumping, packed flags of the wrong lap.
 */
import { DeviceStatus } from '../../src/virtio/constants.ts';
import { DmaPool } from '../../src/virtio/dma.ts';
import type { DriverTransport, InterruptHandlers } from '../../src/virtio/driver.ts';
import type { GuestMemory } from '../../src/virtio/memory.ts';
import type { DescriptorChain, DeviceQueue, QueueAddresses, QueueConfig } from '../../src/virtio/queue.ts';
import { createDeviceQueue, isPackedRing, negotiatedQueueConfig, ringLayout } from '../../src/virtio/ring.ts';
import { mapPackedRing } from '../../src/virtio/packed/ring.ts';
import { RING_IDX, mapSplitRing } from '../../src/virtio/split/layout.ts';
import { MAX_DRIVER_PORTS } from '../../src/devices/console/driver.ts';
import { GuardedMemory } from './guarded-memory.ts';

/**
 * The most queues a driver here sets up unasked: console's port 0, control and MAX_DRIVER_PORTS - 1
 * further ports, two queues each. A driver setting up more believed a device's queue count.
 */
export const MOST_QUEUES_A_DRIVER_WANTS = 2 * (MAX_DRIVER_PORTS + 1);

/** The guest memory a driver gets: one region, all of it the driver's DMA pool. */
export const GUEST_BASE = 0x10_0000;
export const GUEST_BYTES = 0x20_0000;

/** What the device says about itself during initialization. */
export interface Identity {
  readonly deviceId: number;
  readonly features: bigint;
  /** Whether FEATURES_OK sticks when the driver sets it (§3.1.1 step 6). */
  readonly acceptFeatures: boolean;
  readonly numQueues: number;
  /** Queue i's maximum size is maxSizes[i % length] (0: the queue does not exist). */
  readonly maxSizes: readonly number[];
  readonly config: Uint8Array;
  /** Configuration generation reads that see a new generation before it settles (§2.5.1). */
  readonly unsettledReads: number;
}

/** What a raw used element claims; every field may be a lie. */
export interface UsedLie {
  /** The buffer id: one in flight (index into them), or any 16/32-bit value. */
  readonly id: { readonly kind: 'inFlight'; readonly index: number } | { readonly kind: 'raw'; readonly value: number };
  /** Bytes written: relative to the buffer's writable part when `past` is set, else absolute. */
  readonly len: number;
  readonly past: boolean;
  /** Split: how far used->idx moves (1 honest, 0 unpublished, anything else a jump). */
  readonly advance: number;
  /** Packed: the flags written (AVAIL/USED of the right lap are bits 7 and 15). */
  readonly flags: number;
  /** Packed: use the device's used-lap pattern for the flags instead of `flags`. */
  readonly rightLap: boolean;
}

/** One queue the driver enabled, as the device plays it. */
class PlayedQueue {
  readonly ring: DeviceQueue;
  /** Chains popped and not yet returned, oldest first, as the ring hands them out. */
  readonly held: DescriptorChain[] = [];
  /** The device wrote a lie into this ring: its own ring code may disagree with the driver from now on. */
  lied = false;
  /** The ring code refused the ring (after a lie, or because the driver broke a rule): not served any more. */
  dead = false;

  constructor(
    readonly index: number,
    readonly config: QueueConfig,
    readonly packed: boolean,
    memory: GuestMemory,
  ) {
    this.ring = createDeviceQueue(memory, config, packed, `fuzz.q${index}`);
  }
}

export class HostileDevice implements DriverTransport {
  readonly guarded = new GuardedMemory([{ base: GUEST_BASE, bytes: GUEST_BYTES }]);
  readonly memory = this.guarded.driver;
  readonly dma = new DmaPool(this.memory, GUEST_BASE, GUEST_BYTES);
  readonly initialFreeBytes = this.dma.freeBytes;
  private handlers: InterruptHandlers | undefined;
  private status = 0;
  private driverFeatures = 0n;
  private generation = 0;
  private unsettled: number;
  private needsReset = false;
  private closed = false;
  config: Uint8Array;
  readonly queues = new Map<number, PlayedQueue>();
  /** Rules the driver broke that the device-side ring code caught before the device lied, in words. */
  readonly driverFaults: string[] = [];

  constructor(readonly identity: Identity) {
    this.config = identity.config.slice();
    this.unsettled = identity.unsettledReads;
  }

  // --- DriverTransport: the control path ---

  async deviceId(): Promise<number> {
    return this.identity.deviceId;
  }

  async deviceFeatures(): Promise<bigint> {
    return this.identity.features;
  }

  async setDriverFeatures(features: bigint): Promise<void> {
    // §2.2.1: a driver accepts only offered bits.
    if ((features & ~this.identity.features) !== 0n) this.driverFaults.push(`driver accepted features 0x${features.toString(16)} beyond the offered 0x${this.identity.features.toString(16)}`);
    this.driverFeatures = features;
  }

  async getStatus(): Promise<number> {
    return this.status | (this.needsReset ? DeviceStatus.DEVICE_NEEDS_RESET : 0);
  }

  async setStatus(status: number): Promise<void> {
    this.status = this.identity.acceptFeatures ? status : status & ~DeviceStatus.FEATURES_OK;
  }

  async reset(): Promise<void> {
    this.status = 0;
    this.needsReset = false;
    this.queues.clear();
  }

  async configGeneration(): Promise<number> {
    if (this.unsettled > 0) {
      this.unsettled--;
      this.generation++;
    }
    return this.generation;
  }

  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    // Past the end reads zeros, as on virtio-pci.
    const out = new Uint8Array(Math.max(0, length));
    if (offset < this.config.length) out.set(this.config.subarray(offset, offset + length));
    return out;
  }

  async writeConfig(): Promise<void> {}

  async numQueues(): Promise<number> {
    return this.identity.numQueues;
  }

  async queueMaxSize(index: number): Promise<number> {
    if (index >= this.identity.numQueues) return 0;
    const sizes = this.identity.maxSizes;
    return sizes[index % sizes.length];
  }

  async enableQueue(index: number, size: number, addrs: QueueAddresses): Promise<void> {
    if (index >= this.identity.numQueues || size > (await this.queueMaxSize(index))) {
      this.driverFaults.push(`driver enabled queue ${index} of size ${size}, beyond what the device offered`);
      return;
    }
    if (!this.queues.has(index) && this.queues.size >= MOST_QUEUES_A_DRIVER_WANTS) {
      this.driverFaults.push(`driver enabled a queue beyond the ${MOST_QUEUES_A_DRIVER_WANTS} any driver wants: it believed the device's queue count ${this.identity.numQueues}`);
    }
    const features = this.driverFeatures;
    try {
      this.queues.set(index, new PlayedQueue(index, negotiatedQueueConfig(features, size, addrs), isPackedRing(features), this.memory));
    } catch (err) {
      this.driverFaults.push(`driver placed queue ${index} where the ring code refuses it: ${String(err)}`);
    }
  }

  /** The device serves on the fuzzer's moves, not when notified: a driver that forgets to notify still gets answers. */
  notify(): void {}

  setInterruptHandlers(handlers: InterruptHandlers): void {
    this.handlers = handlers;
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  // --- The device's moves ---

  /** The device has DRIVER_OK and has not been reset or closed since. */
  get running(): boolean {
    return !this.closed && (this.status & DeviceStatus.DRIVER_OK) !== 0;
  }

  /** A used-buffer notification for queue `index` on a later turn, as an interrupt arrives. */
  interruptQueue(index: number): void {
    const handlers = this.handlers;
    if (handlers !== undefined) setImmediate(() => handlers.queue(index));
  }

  /** A configuration change: new bytes (or the same), a new generation, a notification. */
  changeConfig(bytes: Uint8Array, unsettledReads: number): void {
    this.config = bytes.slice();
    this.generation++;
    this.unsettled = unsettledReads;
    this.interruptConfig();
  }

  /** §2.1.2: the device sets DEVICE_NEEDS_RESET and notifies a configuration change. */
  signalNeedsReset(): void {
    this.needsReset = true;
    this.interruptConfig();
  }

  private interruptConfig(): void {
    const handlers = this.handlers;
    if (handlers !== undefined) setImmediate(() => handlers.config());
  }

  /** The played queue `choice` names among those enabled, or undefined when none is. */
  queueAt(choice: number): PlayedQueue | undefined {
    if (this.queues.size === 0) return undefined;
    return [...this.queues.values()][choice % this.queues.size];
  }

  /** Pop every chain the driver made available on `q` into q.held; false when the ring code refused it. */
  private take(q: PlayedQueue): boolean {
    if (q.dead) return false;
    try {
      for (let chain = q.ring.pop(); chain !== null; chain = q.ring.pop()) q.held.push(chain);
      return true;
    } catch (err) {
      q.dead = true;
      // Before any lie, the ring is exactly as the driver wrote it: a refusal is the driver's fault.
      if (!q.lied) this.driverFaults.push(`the device-side ring code refused what the driver made available: ${String(err)}`);
      return false;
    }
  }

  /**
   * Answer honestly up to `count` of the chains the driver made available on `q`, oldest first
   * (IN_ORDER holds), writing what `respond` says into each, and notify when the driver asked.
   * Returns how many were answered.
   */
  serve(q: PlayedQueue, count: number, respond: (readable: Uint8Array, writable: number) => Uint8Array): number {
    if (!this.running || !this.take(q)) return 0;
    let served = 0;
    while (served < count && q.held.length > 0) {
      const chain = q.held.shift()!;
      const reply = respond(concat(chain.readable), chain.writableLength);
      let written = 0;
      for (const view of chain.writable) {
        if (written >= reply.length) break;
        const n = Math.min(view.length, reply.length - written);
        view.set(reply.subarray(written, written + n));
        written += n;
      }
      try {
        q.ring.push(chain, written);
      } catch (err) {
        q.dead = true;
        if (!q.lied) this.driverFaults.push(`the device-side ring code refused to return a chain: ${String(err)}`);
        return served;
      }
      served++;
    }
    if (served > 0 && q.ring.publish()) this.interruptQueue(q.index);
    return served;
  }

  /**
   * Overwrite `bytes` at `offset` (wrapped into the area) of one of `q`'s areas, the driver's own
   * descriptor table and available ring included: a vhost-user back-end can write anywhere in
   * guest memory, and a driver must keep what it relies on where the device cannot reach.
   */
  scribble(q: PlayedQueue, area: RingArea, offset: number, bytes: Uint8Array): void {
    if (!this.running) return;
    q.lied = true;
    const size = ringLayout(q.config.size, q.packed)[area].size;
    const at = offset % size;
    this.memory.slice(q.config[area] + at, Math.min(bytes.length, size - at)).set(bytes.subarray(0, size - at));
    this.interruptQueue(q.index);
  }

  /** Write one used element the device makes up, and notify. */
  lie(q: PlayedQueue, lie: UsedLie): void {
    if (!this.running) return;
    this.take(q);
    q.lied = true;
    const held = q.held;
    const named = lie.id.kind === 'inFlight' && held.length > 0 ? held[lie.id.index % held.length] : undefined;
    const id = named?.id ?? (lie.id.kind === 'raw' ? lie.id.value : 0);
    const len = (lie.past ? (named?.writableLength ?? 0) + lie.len : lie.len) >>> 0;
    if (q.packed) {
      const views = mapPackedRing(this.memory, q.config, 'fuzz');
      // The device's next used slot and lap, from its ring position (DeviceQueue.base).
      const base = q.ring.base;
      const pos = ((base >>> 16) & 0x7fff) % q.config.size;
      const wrap = (base >>> 31) & 1;
      views.words[pos * 4 + 2] = len;
      views.halves[pos * 8 + 6] = id & 0xffff;
      const rightLap = wrap === 1 ? 0x8080 : 0;
      Atomics.store(views.halves, pos * 8 + 7, lie.rightLap ? (lie.flags & ~0x8080) | rightLap : lie.flags & 0xffff);
    } else {
      const views = mapSplitRing(this.memory, q.config, 'fuzz');
      const idx = views.used16[RING_IDX];
      const slot = idx & (q.config.size - 1);
      views.used32[1 + 2 * slot] = id >>> 0;
      views.used32[2 + 2 * slot] = len;
      Atomics.store(views.used16, RING_IDX, (idx + lie.advance) & 0xffff);
    }
    this.interruptQueue(q.index);
  }
}

/** A queue area the device may overwrite: it shares all of guest memory with the driver. */
export type RingArea = 'desc' | 'driver' | 'device';

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
