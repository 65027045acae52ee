/**
 * A vhost-user front-end (the VMM side of docs/interop/vhost-user.rst, as DPDK's virtio-user and
 * SPDK's virtio bdev): a DriverTransport whose device is a vhost-user back-end on a Unix socket,
 * so the guest drivers of this project run unchanged against back-ends written elsewhere.
 *
 * How the DriverTransport maps onto the protocol:
 * - guest memory is one memfd (frontend-memory.ts), sent once with SET_MEM_TABLE. ADD_MEM_REG
 *   (CONFIGURE_MEM_SLOTS) is never used: the RAM is one region fixed for the connection's life,
 *   which every back-end can take in one SET_MEM_TABLE;
 * - the device status register (§2.1) lives here: vhost-user has none before the STATUS
 *   protocol feature, and then only as a copy. Setting FEATURES_OK sends SET_FEATURES and keeps
 *   the bit only when the back-end accepts them; with STATUS each status is also sent on;
 * - enableQueue sends SET_VRING_NUM/BASE/ADDR, the call and error eventfds, the kick eventfd
 *   (which starts the ring), then SET_VRING_ENABLE; reset stops every ring with GET_VRING_BASE;
 * - a kick is a write to the ring's kick eventfd; a call eventfd becoming readable is the
 *   queue's interrupt; a CONFIG_CHANGE_MSG on the back-end channel is the configuration
 *   interrupt;
 * - an error eventfd, GET_STATUS reporting it, or the back-end going away sets
 *   DEVICE_NEEDS_RESET and raises a configuration interrupt (§2.1.2), which makes the driver
 *   fail its pending requests instead of waiting for a device that will not answer.
 *
 * vhost-user carries no device ID: the caller says which device it expects behind the socket.
 *
 * Trust. Guest RAM is shared, so the back-end can write any byte of it at any time; what the
 * driver reads back from it (used indexes and lengths, status bytes) is checked by the rings,
 * RequestQueue and the device drivers, as for any device. This module checks what arrives on
 * the sockets: every reply is matched to its request, a hung back-end meets a deadline, and a
 * back-end that hangs up fails what is pending instead of leaving it waiting.
 */
import { existsSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import { EventFd } from '../../native/eventfd.ts';
import { type Watcher, watch } from '../../native/readiness.ts';
import { connectUnix, socketPair, type UnixSocket } from '../../native/unix-socket.ts';
import { DeviceStatus, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import type { DmaAllocator, DriverTransport, InterruptHandlers } from '../../virtio/driver.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import { PACKED_FRESH_BASE } from '../../virtio/packed-ring.ts';
import type { QueueAddresses } from '../../virtio/queue.ts';
import { queueSizeError } from '../../virtio/ring.ts';
import {
  FrontendRequest,
  MAX_CONFIG_SIZE,
  ProtocolFeature,
  VHOST_F_LOG_ALL,
  VHOST_USER_F_PROTOCOL_FEATURES,
  frontendRequestName,
} from './constants.ts';
import { FrontendBackendChannel } from './frontend-backend-channel.ts';
import { FrontendChannel, VhostUserDisconnectedError, VhostUserRefusedError } from './frontend-channel.ts';
import { FrontendMemory } from './frontend-memory.ts';
import type { FrontendReplyMessage, Payload } from './messages.ts';

const F = FrontendRequest;

/** Protocol features this front-end uses when the back-end offers them. */
export const FRONTEND_PROTOCOL_FEATURES: bigint = [
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.STATUS,
].reduce((mask, bit) => mask | featureBit(bit), 0n);

/**
 * Bits of GET_FEATURES that describe the vhost-user transport, not the device, and are not the
 * driver's to accept: PROTOCOL_FEATURES (30) and VHOST_F_LOG_ALL (26, dirty logging for
 * migration, which this front-end never does).
 */
const TRANSPORT_FEATURES = featureBit(VHOST_USER_F_PROTOCOL_FEATURES) | featureBit(VHOST_F_LOG_ALL);

/** Ring indexes travel in 8 bits of SET_VRING_KICK/CALL/ERR. */
const MAX_QUEUES = 256;
/** QEMU's vhost-user-blk queue-size default: a ring size every back-end accepts. */
const DEFAULT_QUEUE_SIZE = 128;
const DEFAULT_MEMORY_SIZE = 64 * 1024 * 1024;
const DEFAULT_REPLY_TIMEOUT_MS = 10_000;

export interface FrontendOptions {
  /** The §5 device ID of the device behind the socket (vhost-user does not say). */
  readonly deviceId: number;
  /** Bytes of guest RAM shared with the back-end (default 64 MiB; a multiple of the page size). */
  readonly memorySize?: number;
  /** Largest queue size offered to the driver (default 128, QEMU's vhost-user-blk default). */
  readonly queueSize?: number;
  /** Queues to offer when the back-end does not speak MQ (default 1). */
  readonly queues?: number;
  /** Longest wait for one reply before the back-end counts as hung (default 10 s). */
  readonly replyTimeoutMs?: number;
  /** The device model to play when the back-end implements only the data path (see LocalDeviceModel). */
  readonly localModel?: LocalDeviceModel;
  readonly log?: Logger;
}

/**
 * The part of a device a VMM implements itself when its back-end offers no CONFIG protocol
 * feature, as QEMU's virtio-net does over vhost-user-net: the back-end moves packets, the VMM
 * owns the configuration space and the features built on it (for net the control queue, which
 * never reaches the back-end). It applies only to such a back-end; one with CONFIG is a whole
 * device and is passed through unchanged.
 */
export interface LocalDeviceModel {
  /** Device features of the back-end passed on to the driver; the others are withheld. */
  readonly features: bigint;
  /** The configuration space the driver reads (bytes past it read as zero); writes are refused. */
  readonly config: Uint8Array;
  /**
   * Queues the device has, used instead of GET_QUEUE_NUM, whose unit is the device's business
   * (DPDK's and QEMU's vhost-user-net count queue pairs).
   */
  readonly queues: number;
}

/** The descriptors of one started ring. */
interface Ring {
  readonly kick: EventFd;
  readonly call: EventFd;
  readonly err: EventFd;
  readonly watchers: Watcher[];
}

const u64 = (value: bigint | number): Payload => ({ kind: 'u64', value: BigInt(value) });

/** The u64 of a reply, or a protocol error naming the request. */
function replyU64(reply: FrontendReplyMessage): bigint {
  if (reply.payload.kind !== 'u64') throw new Error(`${frontendRequestName(reply.request)}: expected a u64 reply, got ${reply.payload.kind}`);
  return reply.payload.value;
}

export class VhostUserFrontend implements DriverTransport {
  readonly memory: GuestMemory;
  readonly dma: DmaAllocator;
  private status = 0;
  private driverFeatures = 0n;
  private handlers: InterruptHandlers | undefined;
  private readonly rings = new Map<number, Ring>();
  private generation = 0;
  private backendChannel: FrontendBackendChannel | undefined;
  private closing = false;
  /** Features the back-end offered (GET_FEATURES), transport bits included. */
  private offered = 0n;
  /** Protocol features both sides use (0n without PROTOCOL_FEATURES). */
  private protocol = 0n;
  private queueCount = 1;
  /** The device model in play: options.localModel for a back-end without CONFIG. */
  private model: LocalDeviceModel | undefined;

  private constructor(
    readonly socketPath: string,
    private readonly options: FrontendOptions,
    private readonly ram: FrontendMemory,
    private readonly channel: FrontendChannel,
    private readonly log: Logger,
  ) {
    this.memory = ram.memory;
    this.dma = ram.dma;
  }

  /**
   * Connect to the back-end at `socketPath` and do what a VMM does before the driver runs:
   * feature and protocol-feature discovery, SET_OWNER, the queue count, the back-end request
   * channel and the memory table.
   */
  static async connect(socketPath: string, options: FrontendOptions): Promise<VhostUserFrontend> {
    const log = (options.log ?? pino({ name: 'paravirt' })).child({ frontend: socketPath });
    const sizeError = queueSizeError(options.queueSize ?? DEFAULT_QUEUE_SIZE, true);
    if (sizeError !== undefined) throw new RangeError(`vhost-user front-end option queueSize: ${sizeError}`);
    if (!existsSync(socketPath)) throw new Error(`vhost-user socket ${socketPath} does not exist`);
    let socket: UnixSocket;
    try {
      socket = await connectUnix(socketPath);
    } catch (err) {
      throw new Error(`cannot connect to the vhost-user socket ${socketPath}: ${(err as Error).message}`, { cause: err });
    }
    let ram: FrontendMemory;
    try {
      ram = FrontendMemory.allocate(options.memorySize ?? DEFAULT_MEMORY_SIZE);
    } catch (err) {
      socket.close();
      throw err;
    }
    // The channel exists before the front-end that hears of its end.
    let onClosed = (_err: VhostUserDisconnectedError): void => {};
    const channel = new FrontendChannel(socket, options.replyTimeoutMs ?? DEFAULT_REPLY_TIMEOUT_MS, (err) => onClosed(err));
    const self = new VhostUserFrontend(socketPath, options, ram, channel, log);
    onClosed = (err) => self.disconnected(err);
    try {
      await self.handshake();
    } catch (err) {
      await self.close();
      throw err;
    }
    return self;
  }

  /** Protocol features in use (for tools and tests). */
  get protocolFeatures(): bigint {
    return this.protocol;
  }

  /** Whether the back-end is still connected. */
  get connected(): boolean {
    return !this.channel.closed;
  }

  /** "If VHOST_USER_F_PROTOCOL_FEATURES has been negotiated, the ring starts disabled." */
  private get ringsStartDisabled(): boolean {
    return hasFeature(this.offered, VHOST_USER_F_PROTOCOL_FEATURES);
  }

  private has(bit: number): boolean {
    return hasFeature(this.protocol, bit);
  }

  private async handshake(): Promise<void> {
    this.offered = replyU64(await this.channel.request({ request: F.GET_FEATURES, payload: { kind: 'empty' } }, true));
    if (hasFeature(this.offered, VHOST_USER_F_PROTOCOL_FEATURES)) {
      const offered = replyU64(await this.channel.request({ request: F.GET_PROTOCOL_FEATURES, payload: { kind: 'empty' } }, true));
      this.protocol = offered & FRONTEND_PROTOCOL_FEATURES;
      await this.channel.request({ request: F.SET_PROTOCOL_FEATURES, payload: u64(this.protocol) }, false);
    }
    await this.send(F.SET_OWNER, { kind: 'empty' });
    this.model = this.has(ProtocolFeature.CONFIG) ? undefined : this.options.localModel;
    if (this.model !== undefined) {
      this.queueCount = this.model.queues;
      if (!Number.isInteger(this.queueCount) || this.queueCount < 1 || this.queueCount > MAX_QUEUES) {
        throw new RangeError(`vhost-user front-end local model queues ${this.queueCount} is not an integer from 1 to ${MAX_QUEUES}`);
      }
    } else if (this.has(ProtocolFeature.MQ)) {
      const n = replyU64(await this.channel.request({ request: F.GET_QUEUE_NUM, payload: { kind: 'empty' } }, true));
      if (n < 1n) throw new Error(`vhost-user back-end ${this.socketPath} reports ${n} queues`);
      this.queueCount = Number(n > BigInt(MAX_QUEUES) ? BigInt(MAX_QUEUES) : n);
    } else {
      this.queueCount = this.options.queues ?? 1;
      if (!Number.isInteger(this.queueCount) || this.queueCount < 1 || this.queueCount > MAX_QUEUES) {
        throw new RangeError(`vhost-user front-end option queues ${this.queueCount} is not an integer from 1 to ${MAX_QUEUES}`);
      }
    }
    if (this.has(ProtocolFeature.BACKEND_REQ)) {
      const [mine, theirs] = socketPair();
      try {
        await this.send(F.SET_BACKEND_REQ_FD, { kind: 'empty' }, [theirs.fd]);
      } catch (err) {
        mine.close();
        throw err;
      } finally {
        // The back-end has its own copy once the message is sent.
        theirs.close();
      }
      this.backendChannel = new FrontendBackendChannel(mine, () => this.configInterrupt(), this.log);
    }
    await this.send(F.SET_MEM_TABLE, { kind: 'memory-table', regions: [this.ram.region] }, [this.ram.fd]);
  }

  /**
   * Send a request without a reply body. With REPLY_ACK the back-end acknowledges it and a
   * non-zero answer is a VhostUserRefusedError; without, a refusal shows as a disconnect.
   */
  private async send(request: number, payload: Payload, fds: readonly number[] = []): Promise<void> {
    const ack = this.has(ProtocolFeature.REPLY_ACK);
    if (!ack) {
      await this.channel.request({ request, payload, fds }, false);
      return;
    }
    const code = replyU64(await this.channel.request({ request, payload, fds, needReply: true }, true));
    if (code !== 0n) throw new VhostUserRefusedError(request, `acknowledged with ${code}`);
  }

  // ---- DriverTransport: identification and features ------------------------------------------

  deviceId(): Promise<number> {
    return Promise.resolve(this.options.deviceId);
  }

  deviceFeatures(): Promise<bigint> {
    return Promise.resolve(this.deviceOffer);
  }

  /** What the driver may accept: the back-end's device features, cut down by the local model. */
  private get deviceOffer(): bigint {
    return this.offered & ~TRANSPORT_FEATURES & (this.model?.features ?? ~0n);
  }

  setDriverFeatures(features: bigint): Promise<void> {
    this.driverFeatures = features;
    return Promise.resolve();
  }

  // ---- DriverTransport: status ---------------------------------------------------------------

  /**
   * The local status, with DEVICE_NEEDS_RESET as GET_STATUS reports it when STATUS is in use.
   * Never fails for a back-end that went away: the driver asks exactly then (§2.1.2), and the
   * disconnect has already set DEVICE_NEEDS_RESET here.
   */
  async getStatus(): Promise<number> {
    if (this.has(ProtocolFeature.STATUS) && this.connected && !this.closing) {
      try {
        const reply = await this.channel.request({ request: F.GET_STATUS, payload: { kind: 'empty' } }, true);
        this.status |= Number(replyU64(reply) & 0xffn) & DeviceStatus.DEVICE_NEEDS_RESET;
      } catch (err) {
        if (!(err instanceof VhostUserDisconnectedError)) throw err;
      }
    }
    return this.status;
  }

  async setStatus(status: number): Promise<void> {
    if (!Number.isInteger(status) || status < 0 || status > 0xff) throw new RangeError(`device status ${status} is not an 8-bit value`);
    if (status === 0) {
      await this.reset();
      return;
    }
    let next = status & ~DeviceStatus.DEVICE_NEEDS_RESET;
    if (next & DeviceStatus.FEATURES_OK && !(this.status & DeviceStatus.FEATURES_OK) && !(await this.acceptFeatures())) {
      next &= ~DeviceStatus.FEATURES_OK;
    }
    if (this.has(ProtocolFeature.STATUS)) await this.send(F.SET_STATUS, u64(next));
    this.status = next | (this.status & DeviceStatus.DEVICE_NEEDS_RESET);
  }

  /**
   * §3.1.1 step 5 as the back-end sees it: SET_FEATURES. Returns whether the features stuck:
   * only accepted ones that were offered, and not refused by the back-end.
   */
  private async acceptFeatures(): Promise<boolean> {
    const extra = this.driverFeatures & ~this.deviceOffer;
    if (extra !== 0n) {
      this.log.warn(`driver accepted features 0x${extra.toString(16)} the back-end did not offer`);
      return false;
    }
    const value = this.driverFeatures | (this.offered & featureBit(VHOST_USER_F_PROTOCOL_FEATURES));
    try {
      await this.send(F.SET_FEATURES, u64(value));
      // Without REPLY_ACK, a round trip is the only way to learn that the back-end took them.
      if (!this.has(ProtocolFeature.REPLY_ACK)) await this.channel.request({ request: F.GET_FEATURES, payload: { kind: 'empty' } }, true);
    } catch (err) {
      if (!(err instanceof VhostUserRefusedError)) throw err;
      this.log.warn(err.message);
      return false;
    }
    return true;
  }

  /** Stop every started ring (GET_VRING_BASE) and clear the status (§2.4). */
  async reset(): Promise<void> {
    const started = [...this.rings.keys()];
    try {
      if (this.connected) {
        for (const index of started) {
          if (this.ringsStartDisabled) await this.send(F.SET_VRING_ENABLE, { kind: 'vring-state', index, num: 0 });
          const reply = await this.channel.request({ request: F.GET_VRING_BASE, payload: { kind: 'vring-state', index, num: 0 } }, true);
          if (reply.payload.kind !== 'vring-state' || reply.payload.index !== index) {
            throw new Error(`vhost-user back-end answered GET_VRING_BASE of ring ${index} about another ring`);
          }
        }
        if (this.has(ProtocolFeature.STATUS)) await this.send(F.SET_STATUS, u64(0));
      }
    } catch (err) {
      // A back-end that went away meanwhile has stopped its rings with the connection.
      if (!(err instanceof VhostUserDisconnectedError)) throw err;
    } finally {
      for (const index of started) this.releaseRing(index);
    }
    this.status = 0;
  }

  // ---- DriverTransport: configuration space --------------------------------------------------

  configGeneration(): Promise<number> {
    return Promise.resolve(this.generation);
  }

  /**
   * GET_CONFIG always from offset 0: libvhost-user back-ends (qemu-storage-daemon) ignore the
   * offset and answer with the space from its start.
   */
  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    this.checkConfigAccess(offset, length);
    if (this.model !== undefined) {
      const data = new Uint8Array(length);
      data.set(this.model.config.subarray(offset, offset + length));
      return data;
    }
    const reply = await this.channel.request(
      { request: F.GET_CONFIG, payload: { kind: 'config', offset: 0, flags: 0, data: new Uint8Array(offset + length) } },
      true,
    );
    if (reply.payload.kind !== 'config') throw new VhostUserRefusedError(F.GET_CONFIG, 'an empty reply (the back-end failed the read)');
    const { data } = reply.payload;
    if (data.length !== offset + length) {
      throw new VhostUserRefusedError(F.GET_CONFIG, `asked for ${offset + length} bytes, answered ${data.length}`);
    }
    return data.slice(offset);
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    this.checkConfigAccess(offset, data.length);
    if (this.model !== undefined) throw new Error(`the configuration space of the device at ${this.socketPath} is read-only here (the front-end provides it)`);
    await this.send(F.SET_CONFIG, { kind: 'config', offset, flags: 0, data });
  }

  private checkConfigAccess(offset: number, length: number): void {
    if (!this.has(ProtocolFeature.CONFIG) && this.model === undefined) {
      throw new Error(`vhost-user back-end ${this.socketPath} does not offer the CONFIG protocol feature, so its configuration space cannot be accessed`);
    }
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 1 || offset + length > MAX_CONFIG_SIZE) {
      throw new RangeError(`configuration access of ${length} bytes at offset ${offset} is outside the ${MAX_CONFIG_SIZE}-byte space`);
    }
  }

  // ---- DriverTransport: queues -----------------------------------------------------------------

  numQueues(): Promise<number> {
    return Promise.resolve(this.queueCount);
  }

  /** vhost-user lets the front-end pick the ring size: the option, for every queue there is. */
  queueMaxSize(index: number): Promise<number> {
    return Promise.resolve(Number.isInteger(index) && index >= 0 && index < this.queueCount ? (this.options.queueSize ?? DEFAULT_QUEUE_SIZE) : 0);
  }

  async enableQueue(index: number, size: number, addrs: QueueAddresses): Promise<void> {
    if (!Number.isInteger(index) || index < 0 || index >= this.queueCount) throw new RangeError(`there is no queue ${index}`);
    if (this.rings.has(index)) throw new Error(`queue ${index} is already enabled`);
    // close() has already released every ring: descriptors opened now would never be closed.
    if (this.closing) throw new Error(`queue ${index} cannot be enabled: the front-end for ${this.socketPath} is closed`);
    const packed = hasFeature(this.driverFeatures, Feature.RING_PACKED);
    const ring: Ring = { kick: EventFd.create(), call: EventFd.create(), err: EventFd.create(), watchers: [] };
    this.rings.set(index, ring);
    ring.watchers.push(
      watch(ring.call.fd, { readable: () => this.callInterrupt(index, ring) }),
      watch(ring.err.fd, { readable: () => this.errInterrupt(index, ring) }),
    );
    const state = (num: number): Payload => ({ kind: 'vring-state', index, num });
    await this.send(F.SET_VRING_NUM, state(size));
    // §2.8: a fresh packed ring starts at position 0 with both wrap counters set.
    await this.send(F.SET_VRING_BASE, state(packed ? PACKED_FRESH_BASE : 0));
    await this.send(F.SET_VRING_ADDR, {
      kind: 'vring-address',
      index,
      flags: 0,
      descUser: this.ram.userAddress(addrs.desc),
      availUser: this.ram.userAddress(addrs.driver),
      usedUser: this.ram.userAddress(addrs.device),
      logGuest: 0n,
    });
    await this.send(F.SET_VRING_CALL, u64(index), [ring.call.fd]);
    await this.send(F.SET_VRING_ERR, u64(index), [ring.err.fd]);
    // The kick descriptor starts the ring ("Starting and stopping rings").
    await this.send(F.SET_VRING_KICK, u64(index), [ring.kick.fd]);
    // With PROTOCOL_FEATURES a ring starts disabled until SET_VRING_ENABLE.
    if (this.ringsStartDisabled) await this.send(F.SET_VRING_ENABLE, state(1));
  }

  notify(index: number): void {
    this.rings.get(index)?.kick.signal();
  }

  setInterruptHandlers(handlers: InterruptHandlers): void {
    this.handlers = handlers;
  }

  /** Disconnect, stop watching, close every descriptor and unmap guest memory. */
  close(): Promise<void> {
    if (this.closing) return Promise.resolve();
    this.closing = true;
    for (const index of [...this.rings.keys()]) this.releaseRing(index);
    this.backendChannel?.close();
    this.channel.close();
    this.ram.release();
    return Promise.resolve();
  }

  // ---- Interrupts ------------------------------------------------------------------------------

  private callInterrupt(index: number, ring: Ring): void {
    try {
      if (ring.call.take() === 0n) return;
      this.handlers?.queue(index);
    } catch (err) {
      this.log.error({ queue: index, err: (err as Error).message }, 'used-buffer interrupt failed');
    }
  }

  /** The back-end signalled an error on a ring: the device needs a reset (§2.1.2). */
  private errInterrupt(index: number, ring: Ring): void {
    try {
      if (ring.err.take() === 0n) return;
    } catch (err) {
      this.log.error({ queue: index, err: (err as Error).message }, 'reading the error eventfd failed');
    }
    this.log.warn({ queue: index }, 'back-end reported a ring error');
    this.needsReset();
  }

  private configInterrupt(): void {
    this.generation++;
    try {
      this.handlers?.config();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'configuration interrupt failed');
    }
  }

  private needsReset(): void {
    this.status |= DeviceStatus.DEVICE_NEEDS_RESET;
    this.configInterrupt();
  }

  /** The main socket ended: nothing pending will complete, so the driver must hear of it. */
  private disconnected(err: VhostUserDisconnectedError): void {
    if (this.closing) return;
    this.log.warn(err.message);
    this.needsReset();
  }

  private releaseRing(index: number): void {
    const ring = this.rings.get(index);
    if (ring === undefined) return;
    this.rings.delete(index);
    for (const w of ring.watchers) w.close();
    ring.kick.close();
    ring.call.close();
    ring.err.close();
  }
}
