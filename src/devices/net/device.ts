/**
 * The virtio-net device (§5.1): an Ethernet interface whose wire is a NetPort (a switch port,
 * a tunnel, a TAP). Frames the driver transmits are checked and sent out of the port; frames
 * arriving at the port pass the receive filter and are written into the driver's receive
 * buffers (rx.ts). The control queue (control.ts) programs filter, address, queue pairs and
 * offloads. Like every device here it knows nothing of the transport that serves it.
 *
 * Queue layout (§5.1.2): receiveq1, transmitq1, ..., receiveqN, transmitqN, controlq, where N is
 * max_virtqueue_pairs when MQ is negotiated and 1 otherwise, so the control queue's index
 * depends on the negotiated features.
 */
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { queueSizeError } from '../../virtio/ring.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import type { ChainReader } from '../../virtio/chain-io.ts';
import { type ControlTarget, guestOffloadMask, serveControl } from './control.ts';
import { NetCounters } from './counters.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import { RxFilter } from './filter.ts';
import { Delivery, plainFrameLimit, receiveOffload, transmitOffload, transmitRefusal } from './offload.ts';
import type { NetPort } from './port.ts';
import { type ReceiveQueue, receiveQueue } from './rx.ts';
import {
  DEFAULT_MTU,
  Duplex,
  ETH_HLEN,
  MAC_SIZE,
  MAX_GSO_FRAME,
  NET_HDR_SIZE,
  type NetConfig,
  NetFeature,
  NetStatus,
  NO_OFFLOAD,
  type Offload,
  SPEED_UNKNOWN,
  VQ_PAIRS_MAX,
  decodeOffload,
  NET_CONFIG,
  macKey,
  missingNetRequirement,
  parseMac,
  NET_FEATURE_NAMES,
  NET_FEATURE_REQUIREMENTS,
} from './wire.ts';

/** Optional features; each defaults to on. */
export interface NetFeatureOptions {
  /** VIRTIO_NET_F_STATUS: link state in the configuration space. */
  readonly status?: boolean;
  /** The control queue and what needs it: CTRL_RX(_EXTRA), CTRL_VLAN, CTRL_MAC_ADDR, GUEST_ANNOUNCE, CTRL_GUEST_OFFLOADS. */
  readonly control?: boolean;
  /** VIRTIO_NET_F_MRG_RXBUF. */
  readonly mergeable?: boolean;
  /** Checksum offload both ways (CSUM, GUEST_CSUM): the port carries partial checksums. */
  readonly checksum?: boolean;
  /** Segmentation offload both ways (HOST/GUEST TSO4, TSO6, ECN, UFO; needs checksum). */
  readonly segmentation?: boolean;
  readonly packed?: boolean;
  readonly eventIdx?: boolean;
  readonly indirect?: boolean;
  readonly inOrder?: boolean;
}

export interface NetDeviceOptions {
  /** Where transmitted frames go and received frames come from. */
  readonly port: NetPort;
  /** The device's address ("52:54:00:12:34:56" or 6 bytes); offers VIRTIO_NET_F_MAC. */
  readonly mac?: string | Uint8Array;
  /** MTU reported with VIRTIO_NET_F_MTU (68..65535); without it the device assumes 1500 and offers no MTU. */
  readonly mtu?: number;
  /** Queue pairs (default 1); more than one offers VIRTIO_NET_F_MQ. */
  readonly queuePairs?: number;
  /** Largest queue size accepted (default 1024, every size a front-end uses). */
  readonly queueSize?: number;
  /** Speed in Mbit/s for VIRTIO_NET_F_SPEED_DUPLEX (offered when given); SPEED_UNKNOWN allowed. */
  readonly speed?: number;
  /** Duplex (wire.ts Duplex) reported with the speed (default FULL). */
  readonly duplex?: number;
  /** Link state at start (default up). */
  readonly linkUp?: boolean;
  /** Frames held per receive queue while the driver posts no buffer (default 256); more are dropped. */
  readonly backlog?: number;
  readonly features?: NetFeatureOptions;
}

const DEFAULT_BACKLOG = 256;
/** struct virtio_net_hdr up to num_buffers: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (§5.1.6). */
const OFFLOAD_FIELDS_SIZE = 10;
/** Flows remembered for receive steering (§5.1.6.5.5); the table starts over when full. */
const STEERING_ENTRIES = 4096;

function checkInt(what: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`virtio-net ${what} ${value} is not an integer from ${min} to ${max}`);
  }
  return value;
}

function macBytes(mac: string | Uint8Array): Uint8Array {
  if (typeof mac === 'string') return parseMac(mac);
  if (mac.length !== MAC_SIZE) throw new RangeError(`virtio-net MAC address of ${mac.length} bytes is not ${MAC_SIZE} bytes long`);
  return mac.slice();
}

/** The state of one activation: negotiated features and the queues serving them. */
interface Active {
  readonly ctx: DeviceContext;
  readonly pairs: number;
  readonly ctrlIndex: number;
  readonly rx: readonly ReceiveQueue[];
  readonly tx: readonly QueueServer[];
  ctrl: QueueServer | undefined;
  readonly filter: RxFilter;
  /** Pairs in use (VQ_PAIRS_SET); 1 after reset (§5.1.6.5.5.2). */
  activePairs: number;
  /** Guest offloads enabled: negotiated ones, then what GUEST_OFFLOADS_SET chose. */
  guestOffloads: bigint;
  /** Peer MAC → pair its last frame from the driver went out on, to steer replies back there. */
  readonly steering: Map<number, number>;
}

export class NetDevice implements VirtioDevice {
  readonly deviceId = DeviceId.NET;
  readonly name = 'net';
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly featureRequirements = NET_FEATURE_REQUIREMENTS;
  readonly featureNames = NET_FEATURE_NAMES;
  readonly config: Uint8Array;
  /** Frames and drops by reason; `counters` holds the queues' own counts and includes these. */
  readonly traffic = new NetCounters();
  readonly counters: DeviceCounters;
  readonly port: NetPort;
  readonly mtu: number;
  /** Largest frame without GSO the device carries either way. */
  readonly frameLimit: number;

  private readonly configuredMac: Uint8Array;
  private readonly maxPairs: number;
  private readonly backlog: number;
  private cfg: NetConfig;
  private linkUp: boolean;
  private active: Active | undefined;
  /** Where a frame spread over several descriptors is gathered before it is lent to the port. */
  private scratch = new Uint8Array(2048);
  /** The transmit header being decoded (decodeOffload keeps nothing of it). */
  private readonly txHeader = new Uint8Array(NET_HDR_SIZE);
  /**
   * The offload fields (the header but num_buffers, left 0) of the last transmitted frame and what they
   * decoded to: a stream's frames carry the same header (checksum offload for TCP, say), so they
   * share one Offload (immutable) instead of decoding a new object per frame.
   */
  private readonly lastTxHeader = new Uint8Array(NET_HDR_SIZE);
  private lastTxOffload: Offload = NO_OFFLOAD;
  /** What of lastTxOffload goes out of the port (transmitOffload). */
  private lastTxSent: Offload = NO_OFFLOAD;
  /** The frame being received and its header, handed to the receive queue (which copies what it keeps). */
  private readonly delivery = new Delivery();

  constructor(options: NetDeviceOptions) {
    this.port = options.port;
    this.maxPairs = checkInt('queue pair count', options.queuePairs ?? 1, 1, VQ_PAIRS_MAX);
    this.maxQueueSize = options.queueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    const sizeError = queueSizeError(this.maxQueueSize, false);
    if (sizeError !== undefined) throw new RangeError(`virtio-net ${sizeError}`);
    this.backlog = checkInt('backlog', options.backlog ?? DEFAULT_BACKLOG, 1, 1 << 20);
    // §5.1.4.1: mtu between 68 and 65535.
    const mtu = options.mtu === undefined ? DEFAULT_MTU : checkInt('MTU', options.mtu, 68, 0xffff);
    this.mtu = mtu;
    this.frameLimit = plainFrameLimit(mtu);
    const speed = options.speed === undefined ? SPEED_UNKNOWN : options.speed;
    if (speed !== SPEED_UNKNOWN) checkInt('speed', speed, 0, 0x7fff_ffff);
    const duplex = options.duplex ?? Duplex.FULL;
    if (duplex !== Duplex.FULL && duplex !== Duplex.HALF && duplex !== Duplex.UNKNOWN) {
      throw new RangeError(`virtio-net duplex ${duplex} is not 0 (half), 1 (full) or 255 (unknown)`);
    }
    this.configuredMac = options.mac === undefined ? new Uint8Array(MAC_SIZE) : macBytes(options.mac);
    this.linkUp = options.linkUp ?? true;

    const f = options.features ?? {};
    const control = f.control ?? true;
    const checksum = f.checksum ?? true;
    const segmentation = f.segmentation ?? checksum;
    const offer: [boolean, number][] = [
      [checksum, NetFeature.CSUM],
      [checksum, NetFeature.GUEST_CSUM],
      [control && checksum, NetFeature.CTRL_GUEST_OFFLOADS],
      [options.mtu !== undefined, NetFeature.MTU],
      [options.mac !== undefined, NetFeature.MAC],
      ...[NetFeature.GUEST_TSO4, NetFeature.GUEST_TSO6, NetFeature.GUEST_ECN, NetFeature.GUEST_UFO].map((b): [boolean, number] => [segmentation, b]),
      ...[NetFeature.HOST_TSO4, NetFeature.HOST_TSO6, NetFeature.HOST_ECN, NetFeature.HOST_UFO].map((b): [boolean, number] => [segmentation, b]),
      [f.mergeable ?? true, NetFeature.MRG_RXBUF],
      [f.status ?? true, NetFeature.STATUS],
      ...[NetFeature.CTRL_VQ, NetFeature.CTRL_RX, NetFeature.CTRL_VLAN, NetFeature.CTRL_RX_EXTRA, NetFeature.GUEST_ANNOUNCE, NetFeature.CTRL_MAC_ADDR].map(
        (b): [boolean, number] => [control, b],
      ),
      [this.maxPairs > 1, NetFeature.MQ],
      [options.speed !== undefined, NetFeature.SPEED_DUPLEX],
      [f.packed ?? true, Feature.RING_PACKED],
      [f.eventIdx ?? true, Feature.EVENT_IDX],
      [f.indirect ?? true, Feature.INDIRECT_DESC],
      [f.inOrder ?? false, Feature.IN_ORDER],
    ];
    this.features = offer.reduce((acc, [on, bit]) => (on ? acc | featureBit(bit) : acc), 0n);
    const missing = missingNetRequirement(this.features);
    if (missing !== undefined) throw new RangeError(`virtio-net cannot offer these features: ${missing} (§5.1.3.1)`);
    this.numQueues = 2 * this.maxPairs + (control ? 1 : 0);
    this.counters = new DeviceCounters(this.numQueues, () => this.traffic.snapshot());

    this.cfg = {
      mac: this.configuredMac,
      status: this.linkUp ? NetStatus.LINK_UP : 0,
      maxVirtqueuePairs: this.maxPairs,
      mtu,
      speed,
      duplex,
    };
    this.config = NET_CONFIG.encode(this.cfg);
    this.port.onReceive((frame, meta) => this.receive(frame, meta));
  }

  /** Whether the link is up; while it is down, frames are dropped both ways. */
  get link(): boolean {
    return this.linkUp;
  }

  /** The device's current address: the configured one, or what MAC_ADDR_SET chose. */
  get mac(): Uint8Array {
    return this.cfg.mac.slice();
  }

  /** Queue pairs the driver is using (1 until VQ_PAIRS_SET, and while not running). */
  get queuePairs(): number {
    return this.active?.activePairs ?? 1;
  }

  /**
   * Bring the link up or down. With VIRTIO_NET_F_STATUS the driver sees it through a
   * configuration change (§5.1.4.2); frames are dropped either way while it is down.
   */
  setLink(up: boolean): void {
    if (up === this.linkUp) return;
    this.linkUp = up;
    if (!hasFeature(this.features, NetFeature.STATUS)) return;
    this.updateConfig({ status: up ? this.cfg.status | NetStatus.LINK_UP : this.cfg.status & ~NetStatus.LINK_UP }, true);
  }

  /**
   * Ask the driver to announce itself (gratuitous ARP after migration, §5.1.6.5.4): sets
   * VIRTIO_NET_S_ANNOUNCE and notifies. False when the driver did not negotiate GUEST_ANNOUNCE.
   */
  announce(): boolean {
    const a = this.active;
    if (a === undefined || !hasFeature(a.ctx.features, NetFeature.GUEST_ANNOUNCE)) return false;
    this.updateConfig({ status: this.cfg.status | NetStatus.ANNOUNCE }, true);
    return true;
  }

  /** Every configuration field is read-only for the driver (§5.1.4): restore what it wrote. */
  configWritten(): void {
    NET_CONFIG.encode(this.cfg, this.config);
  }

  activate(ctx: DeviceContext): void {
    const has = (bit: number): boolean => hasFeature(ctx.features, bit);
    const pairs = has(NetFeature.MQ) ? this.maxPairs : 1;
    const mergeable = has(NetFeature.MRG_RXBUF);
    const rx = Array.from({ length: pairs }, (_, p) => receiveQueue(ctx, 2 * p, mergeable, this.backlog, this.traffic));
    // A port that takes frames as bytes gets the common buffer, header and frame in one
    // descriptor, straight from the ring (QueueServer's SpanHandler).
    const tx = Array.from(
      { length: pairs },
      (_, p) =>
        new QueueServer(
          ctx,
          2 * p + 1,
          (req) => this.transmit(req, p),
          this.port.sendAt === undefined ? undefined : (bytes, at, total) => this.transmitSpan(bytes, at, total, p),
        ),
    );
    const filter = new RxFilter(has(NetFeature.CTRL_RX), has(NetFeature.CTRL_VLAN));
    // A driver that did not take the device's MAC made up its own (§5.1.5); until it says which, any unicast is its.
    filter.setAddress(has(NetFeature.MAC) ? this.cfg.mac : undefined);
    const active: Active = {
      ctx,
      pairs,
      ctrlIndex: 2 * pairs,
      rx,
      tx,
      ctrl: undefined,
      filter,
      activePairs: 1,
      guestOffloads: guestOffloadMask(ctx.features),
      steering: new Map(),
    };
    if (has(NetFeature.CTRL_VQ)) {
      const target = this.controlTarget(active);
      active.ctrl = new QueueServer(ctx, active.ctrlIndex, (req) => serveControl(req, target, this.traffic));
    }
    this.active = active;
    for (const server of tx) server.kick();
    active.ctrl?.kick();
  }

  queueNotify(index: number): void {
    const a = this.active;
    if (a === undefined) return;
    if (index === a.ctrlIndex) a.ctrl?.kick();
    else if (index % 2 === 0) a.rx[index / 2]?.kick();
    else a.tx[(index - 1) / 2]?.kick();
  }

  /** A receive queue may hold buffers too small for the frame waiting: they go back so the ring can stop. */
  queueStopping(index: number): void {
    if (index % 2 === 0 && index !== this.active?.ctrlIndex) this.active?.rx[index / 2]?.queueStopping();
  }

  /** §2.4: forget the activation; the address MAC_ADDR_SET chose and a pending announce go too. */
  reset(): void {
    this.active = undefined;
    this.updateConfig({ mac: this.configuredMac, status: this.cfg.status & ~NetStatus.ANNOUNCE }, false);
  }

  private controlTarget(a: Active): ControlTarget {
    return {
      features: a.ctx.features,
      filter: a.filter,
      maxQueuePairs: a.pairs,
      setAddress: (mac) => {
        a.filter.setAddress(mac);
        // §5.1.6.5.2.1: `mac` reflects the new address before the command is used.
        if (hasFeature(a.ctx.features, NetFeature.MAC)) this.updateConfig({ mac: mac.slice() }, true);
      },
      ackAnnounce: () => this.updateConfig({ status: this.cfg.status & ~NetStatus.ANNOUNCE }, true),
      setQueuePairs: (pairs) => {
        a.activePairs = pairs;
      },
      setGuestOffloads: (offloads) => {
        a.guestOffloads = offloads;
      },
    };
  }

  private updateConfig(change: Partial<NetConfig>, notify: boolean): void {
    this.cfg = { ...this.cfg, ...change };
    NET_CONFIG.encode(this.cfg, this.config);
    if (notify) this.active?.ctx.configChanged();
  }

  /** One transmitq buffer: virtio_net_hdr then the frame (§5.1.6.2). Nothing is written back. */
  private transmit(req: Request, pair: number): void {
    const a = this.active;
    const { reader } = req;
    if (a === undefined) return;
    const total = reader.remaining;
    if (total < NET_HDR_SIZE) {
      this.traffic.drop('malformedBuffer');
      return;
    }
    const port = this.port;
    // Header and frame in one descriptor, as DPDK and Linux put them, for a port that takes a
    // frame as bytes (sendAt): both read where they lie, without a copy or a view.
    const whole = port.sendAt === undefined ? undefined : reader.span(total);
    if (whole !== undefined) {
      this.transmitSpan(whole, reader.spanAt, total, pair);
      return;
    }
    // The header where it lies when it is in one descriptor; copied when it straddles two.
    const hdr = reader.span(NET_HDR_SIZE);
    if (hdr === undefined && reader.read(this.txHeader) !== NET_HDR_SIZE) return;
    const meta = hdr === undefined ? this.transmitMeta(this.txHeader, 0) : this.transmitMeta(hdr, reader.spanAt);
    const length = total - NET_HDR_SIZE;
    if (!this.transmittable(a, meta, length)) return;
    const sent = this.lastTxSent;
    // Lent to the port (port.ts) where it lies when the frame is in one descriptor, which it is
    // for every driver that puts the header in a buffer of its own or in front of the frame: as
    // its bytes to a port that takes them, else as a view; otherwise gathered into a buffer of
    // the device's.
    const bytes = port.sendAt === undefined ? undefined : reader.span(length);
    if (bytes !== undefined) {
      const at = reader.spanAt;
      this.countTransmit(a, bytes, at, length, pair);
      port.sendAt!(bytes, at, length, sent);
      return;
    }
    const frame = reader.view(length) ?? this.gather(reader, length);
    if (frame === undefined) return;
    this.countTransmit(a, frame, 0, length, pair);
    port.send(frame, sent);
  }

  /**
   * A transmit buffer whose header and frame lie in one place: the `total` bytes at `bytes[at]`
   * (a one-descriptor chain, from the ring or through the reader), for a port with sendAt.
   */
  private transmitSpan(bytes: Uint8Array, at: number, total: number, pair: number): void {
    const a = this.active;
    if (a === undefined) return;
    if (total < NET_HDR_SIZE) {
      this.traffic.drop('malformedBuffer');
      return;
    }
    const meta = this.transmitMeta(bytes, at);
    const length = total - NET_HDR_SIZE;
    if (!this.transmittable(a, meta, length)) return;
    const frameAt = at + NET_HDR_SIZE;
    this.countTransmit(a, bytes, frameAt, length, pair);
    this.port.sendAt!(bytes, frameAt, length, this.lastTxSent);
  }

  /** Whether a frame of `length` bytes with offloads `meta` may go out; the reason it may not is counted. */
  private transmittable(a: Active, meta: Offload, length: number): boolean {
    // Checked before copying, so a hostile length costs nothing.
    const refusal = transmitRefusal(meta, length, a.ctx.features, this.mtu);
    if (refusal !== undefined) {
      this.traffic.drop(refusal);
      return false;
    }
    if (!this.linkUp) {
      this.traffic.drop('linkDown');
      return false;
    }
    return true;
  }

  /** A frame at `bytes[at]` goes out: count it, and with several pairs, remember its flow. */
  private countTransmit(a: Active, bytes: Uint8Array, at: number, length: number, pair: number): void {
    this.traffic.txPackets++;
    this.traffic.txBytes += length;
    if (a.activePairs > 1) this.learnFlow(a, bytes, at, pair);
  }

  /** The offload metadata of the transmit header at `hdr[at]`: the last frame's when the fields are the same. */
  private transmitMeta(hdr: Uint8Array, at: number): Offload {
    const last = this.lastTxHeader;
    // The OFFLOAD_FIELDS_SIZE bytes compared in one expression: this runs once per frame.
    const differ =
      (hdr[at] ^ last[0]) |
      (hdr[at + 1] ^ last[1]) |
      (hdr[at + 2] ^ last[2]) |
      (hdr[at + 3] ^ last[3]) |
      (hdr[at + 4] ^ last[4]) |
      (hdr[at + 5] ^ last[5]) |
      (hdr[at + 6] ^ last[6]) |
      (hdr[at + 7] ^ last[7]) |
      (hdr[at + 8] ^ last[8]) |
      (hdr[at + 9] ^ last[9]);
    if (differ !== 0) {
      for (let i = 0; i < OFFLOAD_FIELDS_SIZE; i++) last[i] = hdr[at + i];
      this.lastTxOffload = decodeOffload(last);
      this.lastTxSent = transmitOffload(this.lastTxOffload);
    }
    return this.lastTxOffload;
  }

  /** The next `length` bytes of a frame spread over several descriptors, copied into `scratch`. */
  private gather(reader: ChainReader, length: number): Uint8Array | undefined {
    if (this.scratch.length < length) this.scratch = new Uint8Array(Math.max(length, 2 * this.scratch.length));
    const frame = this.scratch.subarray(0, length);
    return reader.read(frame) === length ? frame : undefined;
  }

  /** §5.1.6.5.5: replies to a flow the driver sent on transmitqX should arrive on receiveqX. */
  private learnFlow(a: Active, frame: Uint8Array, at: number, pair: number): void {
    if (a.steering.size >= STEERING_ENTRIES) a.steering.clear();
    a.steering.set(macKey(frame, at), pair);
  }

  /** A frame arrived at the port: filter it, adapt its offloads, queue it for the driver. */
  private receive(frame: Uint8Array, meta: Offload): void {
    const a = this.active;
    if (a === undefined || !this.linkUp) {
      this.traffic.drop('linkDown');
      return;
    }
    if (frame.length < ETH_HLEN) {
      this.traffic.drop('runt');
      return;
    }
    // §5.1.4.1: nothing beyond mtu + link header without GSO.
    if (frame.length > (meta.gsoType === 0 ? this.frameLimit : MAX_GSO_FRAME)) {
      this.traffic.drop('oversize');
      return;
    }
    if (!a.filter.accepts(frame)) {
      this.traffic.drop('filtered');
      return;
    }
    const out = receiveOffload(frame, meta, a.guestOffloads, this.delivery);
    if (typeof out === 'string') {
      this.traffic.drop(out);
      return;
    }
    a.rx[this.steer(a, frame)].offer(out);
    // The frame was lent for this call: let it go.
    out.clear();
  }

  /** The receive queue for a frame: where its flow was last sent from, else by source address. */
  private steer(a: Active, frame: Uint8Array): number {
    if (a.activePairs === 1) return 0;
    const src = macKey(frame, 6);
    const pair = a.steering.get(src);
    return pair !== undefined && pair < a.activePairs ? pair : src % a.activePairs;
  }
}
