/**
 * The vhost-user back-end state machine: one front-end session serving one VirtioDevice.
 *
 * This module speaks in protocol operations (setFeatures, setMemTable, setVringKick, ...), not
 * in bytes; backend-connection.ts turns decoded messages into these calls and the results into
 * replies. Every argument comes from the front-end and is checked here for meaning (the codec
 * has already checked syntax): queue indexes, sizes, region layouts, ring placement. A refusal
 * is a FrontEndError, which the connection turns into an error reply and one log line.
 *
 * The device is driven through the same DeviceState as under every other transport: status,
 * features, configuration space and generation, activation, reset and DEVICE_NEEDS_RESET live
 * there. This module keeps what is vhost-user's own: the rings' descriptors and their states
 * ("Ring states"), ring addresses in the front-end's address space, the memory table, and the
 * rings behind GatedQueues, attached to the DeviceState once started. The state's notifications
 * leave as eventfd writes (used buffers, ring errors) and as messages on the back-end request
 * channel (configuration changes).
 *
 * With INFLIGHT_SHMFD, rings record the chains the device holds in the inflight region
 * (inflight.ts), which the front-end keeps; a back-end restarted after a crash is handed the
 * region and serves those chains again before new ones (InflightRegion.resume, InflightQueue).
 */
import type { Logger } from 'pino';
import { featureBit, hasFeature } from '../../virtio/constants.ts';
import type { ServingOptions, VirtioDevice } from '../../virtio/device.ts';
import { DeviceState } from '../../virtio/device-state.ts';
import type { DeviceQueue, QueueConfig } from '../../virtio/queue.ts';
import { VirtqueueError } from '../../virtio/queue.ts';
import { createDeviceQueue, isPackedRing, negotiatedQueueConfig, queueSizeError, ringLayout } from '../../virtio/ring.ts';
import { MAX_CONFIG_SIZE, ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES } from './constants.ts';
import { GatedQueue } from './gated-queue.ts';
import { InflightError, InflightMemory, type InflightReply } from './inflight-memory.ts';
import { InflightQueue, type InflightRecord } from './inflight-queue.ts';
import { MAX_MEM_SLOTS, MemoryTable, MemoryTableError } from './memory-table.ts';
import type { MapRegion, RegionDescription, RegionMapping } from './memory-table.ts';

/** The front-end asked for something the protocol or the device does not allow. */
export class FrontEndError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FrontEndError';
  }
}

/** Protocol features ("Protocol features" in vhost-user.rst) this back-end implements. */
const OFFERED_PROTOCOL_FEATURES: bigint = [
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
  ProtocolFeature.INFLIGHT_SHMFD,
].reduce((mask, bit) => mask | featureBit(bit), 0n);

/**
 * How a vhost-user back-end is served: its queues as ServingOptions says, and what it tells the
 * front-end about the device.
 */
export interface VhostUserServing extends ServingOptions {
  /**
   * Offer VHOST_USER_PROTOCOL_F_CONFIG for a device that has a configuration space (the
   * default). False when the front-end provides the configuration space itself and does not
   * expect the back-end to offer it: QEMU's virtio-net over a vhost-user netdev and its
   * vhost-user-scsi build the space from their own properties (neither sets `supports_config`
   * in hw/virtio/vhost-user.c's sense) and warn of a back-end that offers it.
   */
  readonly offerConfig?: boolean;
}

/** What the back-end needs from the operating system; backend-connection.ts supplies the real ones. */
export interface BackendPorts {
  readonly mapRegion: MapRegion;
  /**
   * Call `onKick` whenever eventfd `fd` becomes readable, after consuming its counter.
   * Returns a function that stops watching.
   */
  watchKick(fd: number, onKick: () => void): () => void;
  /** Add 1 to eventfd `fd` (a used-buffer or error notification). */
  signal(fd: number): void;
  /** Send VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the back-end request channel `fd`. */
  sendConfigChange(fd: number): void;
  /** A new shared-memory file of `size` zero bytes (an inflight region); returns its descriptor. */
  createSharedMemory(name: string, size: number): number;
  close(fd: number): void;
}

/** The ring areas as the front-end's user addresses (SET_VRING_ADDR). */
export interface VringAddresses {
  readonly desc: bigint;
  readonly driver: bigint;
  readonly device: bigint;
}

/**
 * One virtqueue's vhost-user state ("Ring states"): stopped until it has a kick fd, then
 * started; enabled or disabled independently.
 */
interface Vring {
  readonly index: number;
  size: number;
  addresses: VringAddresses | undefined;
  base: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  enabled: boolean;
  /** The ring is started: a kick fd arrived and the ring was built. */
  gate: GatedQueue | undefined;
  unwatch: (() => void) | undefined;
  /** The driver broke a ring rule: the ring stays closed until the device is reset. */
  failed: boolean;
  /** The ring's record in the inflight region while it runs tracked. */
  inflight: InflightRecord | undefined;
  /**
   * The ring resumed from a predecessor's inflight record: that process may have died after
   * making used buffers visible and before notifying the driver, which would then wait for a
   * notification nobody sends (with EVENT_IDX it asked for one at its own used position, which
   * every later publish is already past). The driver gets one as soon as there is a call fd.
   */
  owesCall: boolean;
}

const NO_FD = -1;

export class VhostUserBackend {
  /** The features SET_FEATURES accepted, vhost-user's own bit 30 included. */
  private acked = 0n;
  private protocol = 0n;
  private backendReqFd = NO_FD;
  private readonly inflight: InflightMemory;
  private readonly table: MemoryTable;
  private readonly vrings: Vring[];
  /** The device's virtio state, shared with every transport; its queues are the started rings' gates. */
  readonly state: DeviceState;

  /** Throws RangeError for a device the framework cannot serve (DeviceState's checks). */
  constructor(
    readonly device: VirtioDevice,
    private readonly ports: BackendPorts,
    readonly log: Logger,
    private readonly serving: VhostUserServing = {},
  ) {
    this.state = new DeviceState(
      device,
      undefined,
      {
        usedBuffer: (index) => {
          const v = this.vrings[index];
          if (v !== undefined && v.callFd !== NO_FD) this.ports.signal(v.callFd);
        },
        configChange: () => {
          if (this.backendReqFd !== NO_FD && this.hasProtocolFeature(ProtocolFeature.CONFIG)) {
            this.ports.sendConfigChange(this.backendReqFd);
          }
        },
        queueFailed: (index) => this.ringFailed(index),
      },
      log,
      { ...serving, startOnDriverOk: false },
    );
    this.table = new MemoryTable(ports.mapRegion);
    this.inflight = new InflightMemory(ports, device.name, device.numQueues, log);
    this.vrings = Array.from({ length: device.numQueues }, (_, index) => ({
      index,
      size: 0,
      addresses: undefined,
      base: 0,
      kickFd: NO_FD,
      callFd: NO_FD,
      errFd: NO_FD,
      enabled: false,
      gate: undefined,
      unwatch: undefined,
      failed: false,
      inflight: undefined,
      owesCall: false,
    }));
  }

  // ---- Feature negotiation -------------------------------------------------------------------

  /** GET_FEATURES: the device's features, VERSION_1, and the protocol-features bit. */
  get offeredFeatures(): bigint {
    return this.state.offeredFeatures | featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
  }

  /**
   * SET_FEATURES: the front-end may accept only what was offered (§2.2.1). There is no
   * FEATURES_OK handshake: the features are negotiated with the DeviceState at once. A set
   * FEATURES_OK would refuse (no VERSION_1) is logged, not refused, as it always was.
   */
  setFeatures(features: bigint): void {
    const extra = features & ~this.offeredFeatures;
    if (extra !== 0n) throw new FrontEndError(`features 0x${extra.toString(16)} were not offered`);
    if (this.anyStarted() && features !== this.acked) {
      throw new FrontEndError('features cannot change while a ring is started');
    }
    this.acked = features;
    const refusal = this.state.negotiateFeatures(features & ~featureBit(VHOST_USER_F_PROTOCOL_FEATURES));
    if (refusal !== undefined) this.log.debug(`features without FEATURES_OK: ${refusal}`);
  }

  /**
   * GET_PROTOCOL_FEATURES: CONFIG only for a device that has a configuration space and a
   * front-end that reads it from the back-end (VhostUserServing.offerConfig).
   */
  get offeredProtocolFeatures(): bigint {
    const offerConfig = this.device.config.length > 0 && this.serving.offerConfig !== false;
    return offerConfig ? OFFERED_PROTOCOL_FEATURES : OFFERED_PROTOCOL_FEATURES & ~featureBit(ProtocolFeature.CONFIG);
  }

  /** SET_PROTOCOL_FEATURES: legal once bit 30 was offered, which it always is here. */
  setProtocolFeatures(features: bigint): void {
    const extra = features & ~this.offeredProtocolFeatures;
    if (extra !== 0n) throw new FrontEndError(`protocol features 0x${extra.toString(16)} were not offered`);
    this.protocol = features;
  }

  hasProtocolFeature(bit: number): boolean {
    return hasFeature(this.protocol, bit);
  }

  // ---- Ownership and reset -------------------------------------------------------------------

  /** RESET_OWNER is deprecated; the spec recommends treating it as "disable all rings". */
  async resetOwner(): Promise<void> {
    await this.stopAllRings();
    this.state.stop();
  }

  /** RESET_DEVICE: every ring stopped and the device back to its initial state (§2.4), ownership kept. */
  async resetDevice(): Promise<void> {
    await this.stopAllRings();
    this.state.reset();
    this.acked = 0n;
    for (const v of this.vrings) {
      v.size = 0;
      v.addresses = undefined;
      v.base = 0;
      v.enabled = false;
    }
  }

  // ---- Memory ---------------------------------------------------------------------------------

  get maxMemSlots(): number {
    return MAX_MEM_SLOTS;
  }

  /** SET_MEM_TABLE: replace guest memory; running rings continue on the new mappings. */
  async setMemTable(regions: readonly RegionDescription[], fds: readonly number[]): Promise<void> {
    await this.changeMemory(() => this.table.replace(regions, fds));
  }

  /** ADD_MEM_REG (CONFIGURE_MEM_SLOTS). */
  async addMemReg(region: RegionDescription, fd: number): Promise<void> {
    await this.changeMemory(() => {
      this.table.add(region, fd);
      return [];
    });
  }

  /** REM_MEM_REG (CONFIGURE_MEM_SLOTS); a ring living in the removed region fails. */
  async remMemReg(region: RegionDescription): Promise<void> {
    await this.changeMemory(() => this.table.remove(region));
  }

  // ---- Rings ----------------------------------------------------------------------------------

  /** GET_QUEUE_NUM. */
  get queueCount(): number {
    return this.device.numQueues;
  }

  setVringNum(index: number, size: number): void {
    const v = this.stoppedVring(index, 'SET_VRING_NUM');
    // The split/packed rule is applied when the ring starts, once features are final.
    const error = queueSizeError(size, true, this.state.queueMaxSize(index));
    if (error !== undefined) throw new FrontEndError(`ring ${index}: ${error}`);
    v.size = size;
  }

  setVringAddr(index: number, addresses: VringAddresses): void {
    const v = this.stoppedVring(index, 'SET_VRING_ADDR');
    v.addresses = addresses;
  }

  setVringBase(index: number, base: number): void {
    const v = this.stoppedVring(index, 'SET_VRING_BASE');
    if (!Number.isInteger(base) || base < 0 || base > 0xffff_ffff) {
      throw new FrontEndError(`ring ${index}: base ${base} is not a 32-bit value`);
    }
    v.base = base;
  }

  /** GET_VRING_BASE: stop the ring, wait for its chains in flight, and report where it stands. */
  async getVringBase(index: number): Promise<number> {
    const v = this.vring(index);
    await this.stopRing(v);
    if (this.vrings.every((r) => r.gate === undefined)) this.state.stop();
    return v.base;
  }

  /**
   * SET_VRING_KICK: `fd` undefined means the front-end asked for polling, which is refused.
   * Like SET_VRING_CALL and SET_VRING_ERR, this takes ownership of `fd` even when it refuses.
   */
  setVringKick(index: number, fd: number | undefined): void {
    const v = this.vringOwning(index, fd);
    if (fd === undefined) throw new FrontEndError(`ring ${index}: polling instead of a kick fd is not supported`);
    if (v.gate !== undefined) {
      // A new kick fd for a running ring: watch the new one, the ring keeps going.
      v.unwatch?.();
      v.unwatch = undefined;
      this.replaceFd(v, 'kickFd', fd);
      v.unwatch = this.watch(v);
      return;
    }
    this.replaceFd(v, 'kickFd', fd);
    this.startRing(v);
  }

  setVringCall(index: number, fd: number | undefined): void {
    const v = this.vringOwning(index, fd);
    this.replaceFd(v, 'callFd', fd ?? NO_FD);
    this.payOwedCall(v);
  }

  setVringErr(index: number, fd: number | undefined): void {
    this.replaceFd(this.vringOwning(index, fd), 'errFd', fd ?? NO_FD);
  }

  /** SET_VRING_ENABLE. A disabled ring is not processed; in-flight requests still complete. */
  setVringEnable(index: number, enable: number): void {
    const v = this.vring(index);
    if (enable !== 0 && enable !== 1) throw new FrontEndError(`ring ${index}: enable value ${enable} is neither 0 nor 1`);
    v.enabled = enable === 1;
    if (v.gate === undefined || v.failed) return;
    if (v.enabled) {
      v.gate.reopen();
      this.maybeActivate();
      this.notify(index);
    } else {
      void v.gate.close();
    }
  }

  // ---- Inflight I/O tracking ------------------------------------------------------------------

  /**
   * GET_INFLIGHT_FD: allocate a zeroed region for `numQueues` rings of up to `queueSize` entries,
   * laid out for the rings the negotiated features give, start using it, and give its descriptor
   * to the front-end, which keeps it across restarts of this back-end. The caller closes `fd`
   * once the reply is sent.
   */
  getInflightFd(numQueues: number, queueSize: number): InflightReply {
    this.refuseInflightChange();
    return inflightRequest(() => this.inflight.allocate(numQueues, queueSize, isPackedRing(this.state.driverFeatures)));
  }

  /**
   * SET_INFLIGHT_FD: use the region the front-end kept, which may hold the records of a
   * predecessor that crashed; rings starting from now on resubmit what it left in flight.
   */
  setInflightFd(mmapSize: bigint, mmapOffset: bigint, numQueues: number, queueSize: number, fd: number): void {
    this.refuseInflightChange();
    inflightRequest(() => this.inflight.adopt(mmapSize, mmapOffset, numQueues, queueSize, isPackedRing(this.state.driverFeatures), fd));
  }

  private refuseInflightChange(): void {
    if (this.anyStarted()) throw new FrontEndError('the inflight region cannot change while a ring is started');
  }

  // ---- Configuration space and status ---------------------------------------------------------

  /** GET_CONFIG: bytes past the device's configuration space read as zero, as on virtio-pci. */
  getConfig(offset: number, size: number): Uint8Array {
    this.checkConfigRange(offset, size);
    return this.state.readConfig(offset, size);
  }

  /** SET_CONFIG: stored, then handed to the device to act on (e.g. blk's writeback toggle). */
  setConfig(offset: number, payload: Uint8Array): void {
    this.checkConfigRange(offset, payload.length);
    if (offset + payload.length > this.state.configSize) {
      throw new FrontEndError(`config write of ${payload.length} bytes at ${offset} is past the device's ${this.state.configSize} bytes`);
    }
    this.state.writeConfig(offset, payload);
  }

  /**
   * SET_STATUS (§2.1): 0 stops every ring and resets the device, keeping the front-end's
   * features; otherwise the DeviceState takes the bits as from any driver. The device starts
   * when a ring is started and enabled, DRIVER_OK or not (maybeActivate).
   */
  async setStatus(status: number): Promise<void> {
    if (!Number.isInteger(status) || status < 0 || status > 0xff) {
      throw new FrontEndError(`device status ${status} is not an 8-bit value`);
    }
    if (status === 0) {
      await this.stopAllRings();
      this.state.reset(true);
      return;
    }
    this.state.writeStatus(status);
    this.maybeActivate();
  }

  getStatus(): number {
    return this.state.status;
  }

  /** SET_BACKEND_REQ_FD: the channel for CONFIG_CHANGE_MSG. */
  setBackendReqFd(fd: number): void {
    if (!this.hasProtocolFeature(ProtocolFeature.BACKEND_REQ)) {
      this.ports.close(fd);
      throw new FrontEndError('SET_BACKEND_REQ_FD without the BACKEND_REQ protocol feature');
    }
    if (this.backendReqFd !== NO_FD) this.ports.close(this.backendReqFd);
    this.backendReqFd = fd;
  }

  /** GPU_SET_SOCKET: the display socket of a GPU device (vhost-user-gpu.rst); refused for any other device. */
  setGpuSocket(fd: number): void {
    if (this.device.displaySocket === undefined) {
      this.ports.close(fd);
      throw new FrontEndError(`GPU_SET_SOCKET for a ${this.device.name} device, which has no display`);
    }
    this.device.displaySocket(fd);
  }

  /**
   * The front-end went away: stop every ring once its requests complete, reset the device and
   * release every mapping and descriptor, leaving the device ready for the next session.
   */
  async close(): Promise<void> {
    await this.stopAllRings();
    this.state.stop();
    for (const m of this.table.clear()) m.unmap();
    this.state.useMemory(undefined);
    this.inflight.drop();
    for (const v of this.vrings) {
      // A kick fd of a ring that never started (it was refused) is still held here.
      this.replaceFd(v, 'kickFd', NO_FD);
      this.replaceFd(v, 'callFd', NO_FD);
      this.replaceFd(v, 'errFd', NO_FD);
    }
    if (this.backendReqFd !== NO_FD) this.ports.close(this.backendReqFd);
    this.backendReqFd = NO_FD;
  }

  // ---- Internals ------------------------------------------------------------------------------

  private vring(index: number): Vring {
    if (!Number.isInteger(index) || index < 0 || index >= this.vrings.length) {
      throw new FrontEndError(`ring index ${index} is not below the ${this.vrings.length} queues of ${this.device.name}`);
    }
    return this.vrings[index];
  }

  /** vring(index), closing `fd` when the index is refused: the caller handed it over either way. */
  private vringOwning(index: number, fd: number | undefined): Vring {
    try {
      return this.vring(index);
    } catch (err) {
      if (fd !== undefined) this.ports.close(fd);
      throw err;
    }
  }

  private stoppedVring(index: number, what: string): Vring {
    const v = this.vring(index);
    if (v.gate !== undefined) throw new FrontEndError(`${what} for ring ${index} while it is started`);
    return v;
  }

  private anyStarted(): boolean {
    return this.vrings.some((v) => v.gate !== undefined);
  }

  private replaceFd(v: Vring, which: 'kickFd' | 'callFd' | 'errFd', fd: number): void {
    if (v[which] !== NO_FD && v[which] !== fd) this.ports.close(v[which]);
    v[which] = fd;
  }

  /** Whether PROTOCOL_FEATURES was negotiated, which makes rings start disabled ("Ring states"). */
  private get protocolNegotiated(): boolean {
    return hasFeature(this.acked, VHOST_USER_F_PROTOCOL_FEATURES);
  }

  private queueConfig(v: Vring, packed: boolean): QueueConfig {
    if (v.size === 0) throw new FrontEndError(`ring ${v.index} started before SET_VRING_NUM`);
    const sizeError = queueSizeError(v.size, packed, this.state.queueMaxSize(v.index));
    if (sizeError !== undefined) throw new FrontEndError(`ring ${v.index}: ${sizeError}`);
    if (v.addresses === undefined) throw new FrontEndError(`ring ${v.index} started before SET_VRING_ADDR`);
    const layout = ringLayout(v.size, packed);
    // Ring addresses are the front-end's own virtual addresses ("Memory access"): translate each
    // area, whole, through the region table into guest-physical addresses.
    const area = (name: 'desc' | 'driver' | 'device'): number => {
      const gpa = this.table.userToGuest(v.addresses![name], layout[name].size);
      if (gpa === undefined) {
        throw new FrontEndError(`ring ${v.index}: ${name} area at 0x${v.addresses![name].toString(16)} is outside guest memory`);
      }
      return gpa;
    };
    return negotiatedQueueConfig(this.state.driverFeatures, v.size, { desc: area('desc'), driver: area('driver'), device: area('device') });
  }

  /**
   * Build the DeviceQueue for `v` over the current memory at `base`; FrontEndError when it cannot
   * exist. A ring that `resumes` (it starts, rather than being rebuilt over new memory) first
   * takes its record from the inflight region, which may move the base past chains to resubmit.
   */
  private buildQueue(v: Vring, base: number, resumes = false): DeviceQueue {
    const memory = this.table.memory;
    if (memory === undefined) throw new FrontEndError(`ring ${v.index} started before SET_MEM_TABLE`);
    const packed = isPackedRing(this.state.driverFeatures);
    const config = this.queueConfig(v, packed);
    const name = `${this.device.name}[${v.index}]`;
    try {
      if (resumes) {
        v.inflight = undefined;
        const tracked = this.inflight.region?.resume(v.index, memory, config, packed, base, name, this.log);
        if (tracked !== undefined) {
          v.inflight = tracked.record;
          base = tracked.base;
          v.owesCall = tracked.recovered;
        }
      }
      const queue = createDeviceQueue(memory, config, packed, name, base);
      return v.inflight !== undefined ? new InflightQueue(queue, v.inflight) : queue;
    } catch (err) {
      if (err instanceof VirtqueueError || err instanceof RangeError) throw new FrontEndError(err.message);
      throw err;
    }
  }

  /** A kick fd arrived for a stopped ring: the ring starts ("Ring states"). */
  private startRing(v: Vring): void {
    const queue = this.buildQueue(v, isPackedRing(this.state.driverFeatures) ? packedBase(v.base) : v.base, true);
    v.unwatch = this.watch(v);
    v.gate = new GatedQueue(queue);
    v.failed = false;
    this.state.attachQueue(v.index, v.gate);
    if (!this.protocolNegotiated) v.enabled = true;
    if (!v.enabled) void v.gate.close();
    this.payOwedCall(v);
    this.maybeActivate();
    // Buffers may already be waiting (a restarted ring or a kick before the fd was watched).
    if (v.enabled) this.notify(v.index);
  }

  /**
   * A used buffer notification the ring owes the driver (Vring.owesCall), sent once there is a
   * call fd. When no used buffer was left unannounced it is spurious, which a driver takes as
   * nothing to do (§2.7.7.1: the driver MUST handle spurious notifications from the device).
   */
  private payOwedCall(v: Vring): void {
    if (!v.owesCall || v.callFd === NO_FD) return;
    v.owesCall = false;
    this.ports.signal(v.callFd);
  }

  /** Watch the ring's kick fd; a descriptor that cannot be watched (a regular file) is refused. */
  private watch(v: Vring): () => void {
    try {
      return this.ports.watchKick(v.kickFd, () => this.kicked(v));
    } catch (err) {
      throw new FrontEndError(`ring ${v.index}: kick fd cannot be watched: ${(err as Error).message}`);
    }
  }

  private kicked(v: Vring): void {
    if (v.enabled && v.gate?.isOpen === true) this.notify(v.index);
  }

  /** Stop a ring: no more kicks, no more pops, and every chain in flight published. */
  private async stopRing(v: Vring): Promise<void> {
    if (v.gate === undefined) return;
    v.unwatch?.();
    v.unwatch = undefined;
    const gate = v.gate;
    // Buffers the device holds for a later event would otherwise keep the wait below open forever.
    this.device.queueStopping?.(v.index);
    // A failed ring's gate is already detached: nothing in flight to wait for.
    await gate.close();
    if (!v.failed) v.base = gate.base;
    // The device may still hold the gate; detached, it can no longer reach guest memory.
    gate.detach();
    v.gate = undefined;
    this.state.attachQueue(v.index, undefined);
    // Every chain was published, or dropped with the failed ring: the record owes nothing.
    if (v.inflight?.hasPending === false) v.inflight.clear();
    v.inflight = undefined;
    this.replaceFd(v, 'kickFd', NO_FD);
  }

  private async stopAllRings(): Promise<void> {
    await Promise.all(this.vrings.map((v) => this.stopRing(v)));
  }

  /**
   * Start the device once it can serve: when a ring is started and enabled. DRIVER_OK
   * (SET_STATUS) is not waited for: front-ends send it inconsistently (QEMU's generic
   * vhost-user devices never do), and a started, enabled ring already means the driver set
   * the device up (§3.1.1) and the front-end handed the ring over.
   */
  private maybeActivate(): void {
    if (this.state.running || this.table.memory === undefined) return;
    if (!this.vrings.some((v) => v.gate !== undefined && v.enabled && !v.failed)) return;
    this.state.start();
    if (!this.state.running) return;
    for (const v of this.vrings) if (v.gate !== undefined && v.enabled) this.notify(v.index);
  }

  /** Hand a kick to the device while it runs. Runs from event-loop callbacks, so nothing may escape it. */
  private notify(index: number): void {
    try {
      this.state.notify(index);
    } catch (err) {
      this.log.error({ queue: index, err: (err as Error).message }, `${this.device.name}: queue notification failed`);
    }
  }

  /**
   * Change guest memory under running rings: close every ring and wait for its chains in flight
   * (their buffers are views into the old mappings), apply the change, rebuild each ring at its
   * position over the new memory, and only then unmap what the new table dropped.
   */
  private async changeMemory(change: () => RegionMapping[]): Promise<void> {
    const running = this.vrings.filter((v) => v.gate !== undefined);
    // Buffers the device holds for a later event go back; the kick after the change pops them again.
    for (const v of running) this.device.queueStopping?.(v.index);
    await Promise.all(running.map((v) => v.gate!.close()));
    let dropped: RegionMapping[];
    try {
      dropped = change();
      this.state.useMemory(this.table.memory);
    } catch (err) {
      this.reopenAll(running);
      if (err instanceof MemoryTableError) throw new FrontEndError(err.message);
      throw err;
    }
    for (const v of running) {
      // A ring that failed while draining stays failed: its gate is already detached.
      if (v.failed) continue;
      const gate = v.gate!;
      try {
        gate.reopen(this.buildQueue(v, gate.base));
      } catch (err) {
        // The new layout no longer holds this ring: it fails, and must not touch the old mappings.
        this.state.failQueue(v.index, err as Error);
      }
    }
    for (const m of dropped) m.unmap();
    this.reopenAll(running);
  }

  private reopenAll(vrings: readonly Vring[]): void {
    for (const v of vrings) {
      if (v.gate === undefined || v.failed || !v.enabled) continue;
      v.gate.reopen();
      this.notify(v.index);
    }
  }

  /**
   * The DeviceState stopped ring `index` for a broken ring rule (the device's DeviceContext.fail,
   * or a memory change that no longer holds it) and entered DEVICE_NEEDS_RESET: the ring stays
   * closed until the device is reset, reaches no guest memory, and the front-end hears of it
   * through the ring's error eventfd as well as the configuration change.
   */
  private ringFailed(index: number): void {
    const v = this.vrings[index];
    if (v === undefined || v.failed) return;
    v.failed = true;
    if (v.gate !== undefined) {
      v.base = v.gate.base;
      // The device drops its chains in flight on a failed ring; nothing of it may touch memory now.
      v.gate.detach();
    }
    if (v.errFd !== NO_FD) this.ports.signal(v.errFd);
  }

  private checkConfigRange(offset: number, size: number): void {
    if (!Number.isInteger(offset) || !Number.isInteger(size) || offset < 0 || size < 1 || offset + size > MAX_CONFIG_SIZE) {
      throw new FrontEndError(`config access of ${size} bytes at offset ${offset} is outside the ${MAX_CONFIG_SIZE}-byte space`);
    }
  }
}

/**
 * SET_VRING_BASE carries a packed ring's position as avail index | avail wrap counter << 15.
 * QEMU adds the used index and used wrap counter in bits 16-31; DPDK's virtio-user leaves them 0.
 * With the upper half empty nothing is in flight, so the used position is the avail position.
 */
function packedBase(num: number): number {
  return num >>> 16 === 0 ? (num & 0xffff) * 0x1_0001 : num;
}

/** A request on the inflight region; a refusal is the front-end's error. */
function inflightRequest<T>(request: () => T): T {
  try {
    return request();
  } catch (err) {
    if (err instanceof InflightError) throw new FrontEndError(err.message);
    throw err;
  }
}
