/**
 * The host-side state of one VirtioDevice that every transport shares: the device status
 * machine (§2.1, §3.1.1), feature negotiation (§2.2), per-queue configuration, the
 * configuration space and its generation (§2.5), and the device's activation on DRIVER_OK.
 * A transport (mmio registers, pci capabilities, vfio-user regions, vhost-user messages) only
 * maps its own register layout or messages onto these calls and delivers the notifications this
 * state raises.
 *
 * A transport whose rings are not described by guest-physical queue registers — vhost-user: ring
 * addresses in the front-end's address space, a position to resume from, rings that drain before
 * they stop or memory changes — builds each ring itself and attaches it (attachQueue); guest memory
 * may then change under a running device (useMemory), and the device may be started without
 * DRIVER_OK (start).
 *
 * Everything here is reached from the driver and so is hostile input: a bad write never throws,
 * it is ignored or puts the device in DEVICE_NEEDS_RESET (§2.1.2) with one log line.
 */
import { pino } from 'pino';
import type { Logger } from 'pino';
import { DeviceStatus, Feature, featureBit } from './constants.ts';
import type { DeviceCounters } from './counters.ts';
import type { DeviceContext, ServingOptions, VirtioDevice } from './device.ts';
import { checkImplementable, describeFeatures, missingRequirement, refuseFeatures } from './features.ts';
import type { GuestMemory } from './memory.ts';
import { GuestMemoryError } from './memory.ts';
import { VirtqueueError } from './queue.ts';
import type { DeviceQueue, QueueAddresses } from './queue.ts';
import { createDeviceQueue, isPackedRing, negotiatedQueueConfig, queueSizeError } from './ring.ts';

/** Where the device's notifications go; the transport turns them into its interrupts. */
export interface InterruptSink {
  /** Used buffer notification for queue `queue` (§2.3.2). */
  usedBuffer(queue: number): void;
  /** Configuration change notification (§2.3.1), also sent on DEVICE_NEEDS_RESET. */
  configChange(): void;
  /** Queue `queue` was stopped for a broken ring rule (vhost-user signals the ring's error eventfd). */
  queueFailed?(queue: number): void;
}

export type QueueArea = keyof QueueAddresses;

export interface DeviceStateOptions extends ServingOptions {
  /**
   * Whether DRIVER_OK activates the device (default). vhost-user says no: its back-end starts
   * the device itself once a ring is started and enabled, whether DRIVER_OK came or not, and
   * stops it when the last ring stops (backend.ts), so the device never runs without a ring.
   */
  readonly startOnDriverOk?: boolean;
}

interface QueueSlot {
  size: number;
  desc: number;
  driver: number;
  device: number;
  /** What the driver last wrote to the queue's ready/enable register. */
  ready: boolean;
  /** The live queue, once the device runs it; cleared on failure, disable or reset. */
  queue: DeviceQueue | undefined;
}

const U32 = 0x1_0000_0000;

/** The feature word (32 bits) `sel` of a 64-bit feature set; words past 1 read as zero. */
function featureWord(features: bigint, sel: number): number {
  if (sel !== 0 && sel !== 1) return 0;
  return Number((features >> BigInt(sel * 32)) & 0xffff_ffffn);
}

export class DeviceState {
  /** Features offered: the device's bits and VERSION_1 (§6.1, this framework is modern only). */
  readonly offeredFeatures: bigint;
  readonly log: Logger;
  private statusBits = 0;
  private accepted = 0n;
  /** The driver wrote a non-zero feature word past bit 63, which nothing offers. */
  private acceptedBeyond64 = false;
  private generation = 0;
  private readonly slots: QueueSlot[];
  /** The DeviceContext of the current activation; replaced (and the old one made inert) by reset. */
  private active: ActiveContext | undefined;

  constructor(
    readonly device: VirtioDevice,
    private mem: GuestMemory | undefined,
    private readonly sink: InterruptSink,
    log: Logger = pino({ name: 'paravirt' }),
    private readonly options: DeviceStateOptions = {},
  ) {
    const who = `device ${device.name}`;
    if (!Number.isInteger(device.numQueues) || device.numQueues < 0) {
      throw new RangeError(`${who}: queue count ${device.numQueues} is not a non-negative integer`);
    }
    const sizeError = queueSizeError(device.maxQueueSize, false);
    if (sizeError !== undefined) throw new RangeError(`${who}: maximum ${sizeError}`);
    this.offeredFeatures = device.features | featureBit(Feature.VERSION_1);
    checkImplementable(this.offeredFeatures, who);
    this.log = log.child({ device: device.name });
    this.slots = Array.from({ length: device.numQueues }, (_, i) => this.freshSlot(i));
    // The device's snapshots read its queues' fill from whoever serves it now.
    device.counters.observe(this);
  }

  /** Guest memory the queues live in; undefined until a vhost-user front-end sends its memory table. */
  get memory(): GuestMemory | undefined {
    return this.mem;
  }

  /** Guest memory changed (vhost-user SET_MEM_TABLE); the transport rebuilt the rings over it. */
  useMemory(memory: GuestMemory | undefined): void {
    this.mem = memory;
  }

  // --- status (§2.1) ---

  get status(): number {
    return this.statusBits;
  }

  /**
   * The driver wrote the status register. Zero resets (§2.4). Otherwise the driver may only add
   * bits (§2.1.1 "driver MUST NOT clear a device status bit"): bits it tries to clear stay set,
   * DEVICE_NEEDS_RESET is the device's alone, and each newly set bit is checked in §3.1.1 order.
   */
  writeStatus(value: number): void {
    value &= 0xff;
    if (value === 0) {
      this.reset();
      return;
    }
    const added = value & ~this.statusBits & ~DeviceStatus.DEVICE_NEEDS_RESET;
    this.statusBits |= added & (DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FAILED);
    if (added & DeviceStatus.FEATURES_OK) this.featuresOk();
    if (added & DeviceStatus.DRIVER_OK) this.driverOk();
  }

  /** §3.1.1 step 5-6: FEATURES_OK only sticks for a subset of the offer that includes VERSION_1. */
  private featuresOk(): void {
    const refusal = this.featureRefusal();
    if (refusal !== undefined) {
      // Debug, not info: a driver may retry without limit, and the driver itself sees the refusal.
      this.log.debug(`FEATURES_OK refused: ${refusal}`);
      return;
    }
    this.statusBits |= DeviceStatus.FEATURES_OK;
    this.log.debug(`features negotiated: ${describeFeatures(this.accepted, this.device.featureNames)}`);
  }

  /** §3.1.1 step 8: build the queues the driver enabled and start the device. */
  private driverOk(): void {
    if (!(this.statusBits & DeviceStatus.FEATURES_OK)) {
      this.log.debug('DRIVER_OK ignored: features were not negotiated (FEATURES_OK is not set)');
      return;
    }
    this.statusBits |= DeviceStatus.DRIVER_OK;
    if (this.statusBits & DeviceStatus.DEVICE_NEEDS_RESET) {
      // The driver went on despite an earlier fault (a refused queue): tell it now (§2.1.2).
      this.sink.configChange();
      return;
    }
    for (let i = 0; i < this.slots.length; i++) {
      const slot = this.slots[i];
      if (slot.ready && slot.queue === undefined && !this.startQueue(i)) return;
    }
    if (this.options.startOnDriverOk !== false) this.start();
  }

  /** Whether the device runs: activated, and not reset since. */
  get running(): boolean {
    return this.active !== undefined;
  }

  /**
   * Activate the device with the queues it has now. DRIVER_OK does this; vhost-user calls it
   * once a ring is started and enabled, since front-ends do not all send DRIVER_OK (backend.ts).
   */
  start(): void {
    if (this.active !== undefined || this.mem === undefined) return;
    const ctx = new ActiveContext(this);
    this.active = ctx;
    try {
      this.device.activate(ctx);
    } catch (err) {
      // A device bug, not the driver's: still contained to this device.
      this.log.error({ err }, `${this.device.name}: activation failed`);
      this.needsReset(this.device.name, 'activation failed', err instanceof Error ? err.message : String(err));
    }
  }

  /**
   * Device reset (§2.4): writing 0 to status, at any time. `keepFeatures` is for vhost-user,
   * where the features are the front-end's (SET_FEATURES), which a status reset leaves alone.
   */
  reset(keepFeatures = false): void {
    // A device that never ran is reset too: it may hold state from before activation.
    if (this.active === undefined) this.device.reset();
    this.stop();
    this.statusBits = 0;
    if (!keepFeatures) {
      this.accepted = 0n;
      this.acceptedBeyond64 = false;
    }
    for (let i = 0; i < this.slots.length; i++) this.slots[i] = this.freshSlot(i);
  }

  /**
   * The device stops and forgets its queues, its context retired; status and features stay but
   * for DEVICE_NEEDS_RESET, which the stop answers (vhost-user: every ring stopped).
   */
  stop(): void {
    // Make the old context inert first, so completions racing the reset see it (see serve.ts).
    const wasRunning = this.active !== undefined;
    this.active?.retire();
    this.active = undefined;
    if (wasRunning) this.device.reset();
    this.statusBits &= ~DeviceStatus.DEVICE_NEEDS_RESET;
    for (const slot of this.slots) {
      slot.ready = false;
      slot.queue = undefined;
    }
  }

  /**
   * Enter DEVICE_NEEDS_RESET (§2.1.2): log one line naming where and which rule, and tell a
   * running driver through a configuration change notification. Later faults until the reset
   * are only logged at debug level, so a hostile driver cannot flood the log.
   */
  needsReset(where: string, rule: string, detail: string): void {
    if (this.statusBits & DeviceStatus.DEVICE_NEEDS_RESET) {
      this.log.debug({ queue: where, rule }, `${detail} (device already needs reset)`);
      return;
    }
    this.statusBits |= DeviceStatus.DEVICE_NEEDS_RESET;
    this.log.warn({ queue: where, rule }, `${where}: ${detail}; device needs reset`);
    if (this.driverRunning) this.sink.configChange();
  }

  // --- features (§2.2) ---

  /** Feature word `sel` (bits sel*32 .. sel*32+31) of the offer. */
  deviceFeatureWord(sel: number): number {
    return featureWord(this.offeredFeatures, sel);
  }

  /** Feature word `sel` of what the driver accepted. */
  driverFeatureWord(sel: number): number {
    return featureWord(this.accepted, sel);
  }

  get driverFeatures(): bigint {
    return this.accepted;
  }

  /** The queue servers' poll budget (ServingOptions.pollMicros). */
  get pollMicros(): number | undefined {
    return this.options.pollMicros;
  }

  /** The driver wrote feature word `sel`. Ignored once FEATURES_OK is set (§3.1.1 step 5). */
  writeDriverFeatureWord(sel: number, value: number): void {
    if (this.statusBits & DeviceStatus.FEATURES_OK) return;
    if (sel === 0 || sel === 1) {
      const shift = BigInt(sel * 32);
      this.accepted = (this.accepted & ~(0xffff_ffffn << shift)) | (BigInt(value >>> 0) << shift);
    } else if (value !== 0) {
      this.acceptedBeyond64 = true;
    }
  }

  /** Transports that carry all 64 bits at once (vhost-user). */
  writeDriverFeatures(features: bigint): void {
    this.writeDriverFeatureWord(0, Number(features & 0xffff_ffffn));
    this.writeDriverFeatureWord(1, Number((features >> 32n) & 0xffff_ffffn));
    if (features >> 64n !== 0n) this.writeDriverFeatureWord(2, 1);
  }

  /**
   * Negotiate in one step, for transports without a FEATURES_OK handshake (vhost-user: the
   * front-end's SET_FEATURES is final for the rings started after it, and may be sent again
   * while none runs). The features replace any accepted before and are checked as FEATURES_OK
   * checks them (§3.1.1), which is then set; returns why they were refused, or undefined.
   */
  negotiateFeatures(features: bigint): string | undefined {
    this.statusBits &= ~DeviceStatus.FEATURES_OK;
    this.accepted = 0n;
    this.acceptedBeyond64 = false;
    this.writeDriverFeatures(features);
    const refusal = this.featureRefusal();
    if (refusal === undefined) this.statusBits |= DeviceStatus.FEATURES_OK;
    return refusal;
  }

  private featureRefusal(): string | undefined {
    if (this.acceptedBeyond64) return 'driver accepted feature bits beyond 63, which the device did not offer';
    const refusal = refuseFeatures(this.offeredFeatures, this.accepted, this.device.featureNames);
    if (refusal !== undefined || this.device.featureRequirements === undefined) return refusal;
    const missing = missingRequirement(this.accepted, this.device.featureRequirements, this.device.featureNames);
    return missing === undefined ? undefined : `${missing}, which the driver did not accept (§2.2.1)`;
  }

  // --- queues ---

  /** Queue count the device offers. */
  get numQueues(): number {
    return this.slots.length;
  }

  /** Largest size of queue `index`, 0 when there is no such queue (§4.2.2 QueueSizeMax). */
  queueMaxSize(index: number): number {
    return this.slots[index] === undefined ? 0 : this.maxSizeOf(index);
  }

  private maxSizeOf(index: number): number {
    return Math.min(this.device.maxQueueSize, this.device.queueMaxSize?.(index) ?? this.device.maxQueueSize);
  }

  queueSize(index: number): number {
    return this.slots[index]?.size ?? 0;
  }

  queueArea(index: number, area: QueueArea): number {
    return this.slots[index]?.[area] ?? 0;
  }

  queueReady(index: number): boolean {
    return this.slots[index]?.ready ?? false;
  }

  /** The driver chose a size. Checked when it enables the queue; ignored while enabled (§4.2.2.2). */
  writeQueueSize(index: number, size: number): void {
    const slot = this.slots[index];
    if (slot !== undefined && !slot.ready) slot.size = size;
  }

  /** The driver placed one area of a queue. Ignored while the queue is enabled (§4.2.2.2). */
  writeQueueArea(index: number, area: QueueArea, addr: number): void {
    const slot = this.slots[index];
    if (slot !== undefined && !slot.ready) slot[area] = addr;
  }

  /** Low (`high` false) or high 32 bits of a queue area address, as 32-bit registers carry them. */
  writeQueueAreaHalf(index: number, area: QueueArea, high: boolean, value: number): void {
    const addr = this.queueArea(index, area);
    const lo = high ? addr % U32 : value >>> 0;
    const hi = high ? value >>> 0 : Math.floor(addr / U32);
    this.writeQueueArea(index, area, hi * U32 + lo);
  }

  /**
   * The driver enabled (or disabled) queue `index`. A size the device cannot use (0, above the
   * maximum, or not a power of two for a split ring) leaves the queue disabled — the driver
   * reading back the ready register sees the refusal — and puts the device in
   * DEVICE_NEEDS_RESET, since the driver broke §4.2.2.2 / §2.7.
   */
  writeQueueReady(index: number, ready: boolean): void {
    const slot = this.slots[index];
    if (slot === undefined || slot.ready === ready) return;
    if (!ready) {
      slot.ready = false;
      slot.queue = undefined;
      return;
    }
    const sizeError = queueSizeError(slot.size, this.packed, this.queueMaxSize(index));
    if (sizeError !== undefined) {
      this.needsReset(this.queueName(index), 'bad queue size', sizeError);
      return;
    }
    slot.ready = true;
    if (this.active !== undefined) this.startQueue(index);
  }

  /**
   * A transport that builds its rings itself hands queue `index` over, ready to run (or, with
   * undefined, takes it back): it is enabled as if the driver had written the ready register.
   */
  attachQueue(index: number, queue: DeviceQueue | undefined): void {
    const slot = this.slots[index];
    if (slot === undefined) return;
    slot.ready = queue !== undefined;
    slot.queue = queue;
    if (queue !== undefined) slot.size = queue.size;
  }

  /** The driver notified queue `index` (§2.3.3). The device hears of it only while it runs. */
  notify(index: number): void {
    if (this.active !== undefined && this.slots[index]?.queue !== undefined) this.device.queueNotify(index);
  }

  queueName(index: number): string {
    return `${this.device.name}.q${index}`;
  }

  /** The live queue `index`, or undefined. */
  liveQueue(index: number): DeviceQueue | undefined {
    return this.slots[index]?.queue;
  }

  /** Stop queue `index` after the driver broke a ring rule on it (DeviceContext.fail). */
  failQueue(index: number, err: Error): void {
    const slot = this.slots[index];
    if (slot !== undefined) slot.queue = undefined;
    this.device.counters.queue(index).ringFaults++;
    this.sink.queueFailed?.(index);
    const rule = err instanceof VirtqueueError ? err.rule : err instanceof GuestMemoryError ? 'guest memory access' : err.name;
    this.needsReset(this.queueName(index), rule, err.message);
  }

  private get packed(): boolean {
    return isPackedRing(this.accepted);
  }

  /** Build the ring for an enabled queue; a misplaced ring is the driver's fault (NEEDS_RESET). */
  private startQueue(index: number): boolean {
    const slot = this.slots[index];
    const config = negotiatedQueueConfig(this.accepted, slot.size, slot);
    try {
      if (this.mem === undefined) throw new VirtqueueError('ring outside guest memory', `${this.queueName(index)}: there is no guest memory`);
      slot.queue = createDeviceQueue(this.mem, config, this.packed, this.queueName(index));
      return true;
    } catch (err) {
      if (!(err instanceof VirtqueueError || err instanceof GuestMemoryError)) throw err;
      this.failQueue(index, err);
      return false;
    }
  }

  private freshSlot(index: number): QueueSlot {
    // A queue's size starts at the maximum until the driver picks one (§4.1.4.3 queue_size).
    return { size: this.maxSizeOf(index), desc: 0, driver: 0, device: 0, ready: false, queue: undefined };
  }

  // --- configuration space (§2.5) ---

  get configGeneration(): number {
    return this.generation;
  }

  get configSize(): number {
    return this.device.config.length;
  }

  /** Bytes [offset, offset+length) of the configuration space; bytes past its end read as zero. */
  readConfig(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    const config = this.device.config;
    if (offset >= 0 && offset < config.length) out.set(config.subarray(offset, Math.min(config.length, offset + length)));
    return out;
  }

  /** The driver wrote configuration bytes; writes reaching outside the space are dropped whole. */
  writeConfig(offset: number, data: Uint8Array): void {
    const config = this.device.config;
    if (!Number.isInteger(offset) || offset < 0 || offset + data.length > config.length || data.length === 0) return;
    config.set(data, offset);
    this.device.configWritten?.(offset, data.length);
  }

  /** The device changed its configuration: a new generation (§2.5.1), and a notification once running. */
  configChanged(): void {
    this.generation = (this.generation + 1) >>> 0;
    if (this.driverRunning) this.sink.configChange();
  }

  /** Whether the driver listens for configuration changes: DRIVER_OK set, or the device started without it. */
  private get driverRunning(): boolean {
    return (this.statusBits & DeviceStatus.DRIVER_OK) !== 0 || this.active !== undefined;
  }

  /** Used buffer notification, from the running context only. */
  usedBuffer(index: number): void {
    this.sink.usedBuffer(index);
  }
}

/**
 * The DeviceContext of one activation. After a reset it is retired: it reports no queues and
 * drops notifications, so work the device still had in flight cannot reach the new driver.
 */
class ActiveContext implements DeviceContext {
  private retired = false;
  readonly features: bigint;
  readonly log: Logger;
  readonly counters: DeviceCounters;
  readonly pollMicros: number | undefined;

  constructor(private readonly state: DeviceState) {
    this.features = state.driverFeatures;
    this.log = state.log;
    this.counters = state.device.counters;
    this.pollMicros = state.pollMicros;
  }

  /** The state's memory, which vhost-user may replace while the device runs; activation needs some. */
  get memory(): GuestMemory {
    return this.state.memory!;
  }

  retire(): void {
    this.retired = true;
  }

  queue(index: number): DeviceQueue | undefined {
    return this.retired ? undefined : this.state.liveQueue(index);
  }

  notifyQueue(index: number): void {
    if (!this.retired && this.state.liveQueue(index) !== undefined) this.state.usedBuffer(index);
  }

  /** The configuration belongs to the device, not the activation: a change always counts. */
  configChanged(): void {
    this.state.configChanged();
  }

  fail(index: number, err: Error): void {
    if (!this.retired && this.state.liveQueue(index) !== undefined) this.state.failQueue(index, err);
  }
}
