/**
 * The virtio-net driver (§5.1): an Ethernet interface over any DriverTransport. Frames go out
 * with `send`, come in through `receive()`, and the control queue programs filters, address,
 * queue pairs and offloads.
 *
 * Receive buffers are posted at start and each is posted again the moment the device returns
 * it, so the receive rings stay full whatever the consumer does: frames the consumer does not
 * take are held in a bounded inbox and dropped (and counted) beyond it, never left in the ring.
 * With MRG_RXBUF a frame spread over several buffers is reassembled from num_buffers.
 *
 * The device is not trusted: used lengths are clamped by RequestQueue, a header shorter than
 * virtio_net_hdr or a num_buffers that cannot be right drops the frame, and configuration
 * values are checked before use.
 */
import { randomFillSync } from 'node:crypto';
import type { Logger } from 'pino';
import { DeviceId, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import type { RequestQueue } from '../../virtio/request-queue.ts';
import { plainFrameLimit } from './offload.ts';
import type { NetPort } from './port.ts';
import {
  NET_CONFIG,
  CTRL_HDR_SIZE,
  CtrlAck,
  CtrlAnnounce,
  CtrlClass,
  CtrlGuestOffloads,
  CtrlMac,
  CtrlMq,
  CtrlRx,
  CtrlVlan,
  DEFAULT_MTU,
  ETH_HLEN,
  GsoType,
  MAC_SIZE,
  MAX_GSO_FRAME,
  type MacTable,
  NET_FEATURE_NAMES,
  NET_HDR_SIZE,
  NO_OFFLOAD,
  type NetConfig,
  NetFeature,
  NetStatus,
  type Offload,
  VLAN_ID_MAX,
  VQ_PAIRS_MAX,
  decodeNumBuffers,
  decodeOffload,
  encodeMacTable,
  encodeNetHeader,
  formatMac,
  parseMac,
  randomMac,
} from './wire.ts';

/** Every virtio-net feature this driver implements, and the ring features it can use. */
export const NET_DRIVER_FEATURES: bigint = [...Object.values(NetFeature)].reduce((acc, bit) => acc | featureBit(bit), FRAMEWORK_FEATURES);

/** The checksum and segmentation offloads, both directions, and the command that switches them. */
export const NET_OFFLOAD_FEATURES: bigint = [
  NetFeature.CSUM,
  NetFeature.GUEST_CSUM,
  NetFeature.CTRL_GUEST_OFFLOADS,
  NetFeature.GUEST_TSO4,
  NetFeature.GUEST_TSO6,
  NetFeature.GUEST_ECN,
  NetFeature.GUEST_UFO,
  NetFeature.HOST_TSO4,
  NetFeature.HOST_TSO6,
  NetFeature.HOST_ECN,
  NetFeature.HOST_UFO,
].reduce((acc, bit) => acc | featureBit(bit), 0n);

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
  readonly log?: Logger;
}

export interface ReceivedFrame {
  readonly frame: Uint8Array;
  readonly meta: Offload;
  /** The queue pair (0-based) it arrived on. */
  readonly pair: number;
}

export interface SendOptions {
  /** Offload metadata for the header (default none: a complete frame). */
  readonly meta?: Offload;
  /** Queue pair to transmit on (default 0). */
  readonly pair?: number;
}

/** The device answered a control command with VIRTIO_NET_ERR (or wrote no ack). */
export class NetControlError extends Error {
  constructor(what: string, ack: number) {
    super(`net: ${what} failed: the device answered ${ack === CtrlAck.ERR ? 'VIRTIO_NET_ERR' : `ack ${ack}`}`);
    this.name = 'NetControlError';
  }
}

export class NetDriverCounters {
  rxPackets = 0;
  rxBytes = 0;
  txPackets = 0;
  txBytes = 0;
  /** Buffers the device returned with an impossible header or length. */
  rxMalformed = 0;
  /** Frames dropped because the inbox was full. */
  rxInboxFull = 0;
  /** Frames a bridge could not transmit (too large, or the driver closed). */
  txFailed = 0;
}

/** A value no device writes as ack: set before submitting, it tells "never written" apart. */
const ACK_UNWRITTEN = 0xff;
const DEFAULT_INBOX = 1024;
const MERGEABLE_BUFFER = 2048;

/** A frame being reassembled from several merged receive buffers. */
interface Assembly {
  readonly meta: Offload;
  readonly parts: Uint8Array[];
  bytes: number;
  left: number;
}

export class NetDriver {
  readonly counters = new NetDriverCounters();
  private cfg: NetConfig;
  private address: Uint8Array;
  private pairsInUse = 1;
  /** Pairs whose receive queue has buffers posted. */
  private posted = 0;
  private readonly inbox: ReceivedFrame[] = [];
  private readonly readers: ((f: ReceivedFrame | undefined) => void)[] = [];
  private readonly linkListeners: ((up: boolean) => void)[] = [];
  private readonly announceListeners: (() => void | Promise<void>)[] = [];
  private readonly txSlots: number[] = [];
  private txSlotsMade = 0;
  private readonly txWaiters: (() => void)[] = [];
  private closed = false;
  /** MRG_RXBUF negotiated: a frame may span several receive buffers (§5.1.6.4). */
  private readonly mergeable: boolean;
  /**
   * The MTU, fixed at start: §5.1.4.1 forbids the device to change it once set, and a copy keeps
   * a device that does anyway from resizing buffers in use. Read on every send, so kept as a
   * number rather than worked out from the feature bits each time.
   */
  private readonly mtuBytes: number;
  /** Transmit buffers hold a header and the largest plain frame; GSO frames get their own. */
  private readonly txSlotSize: number;

  private constructor(
    /** The generic driver underneath: its queues carry what the methods here build. */
    readonly core: VirtioDriver,
    cfg: NetConfig,
    /** N of §5.1.2: pairs the device has queues for. */
    readonly maxQueuePairs: number,
    private readonly rxBufferSize: number,
    private readonly inboxLimit: number,
  ) {
    this.cfg = cfg;
    this.address = cfg.mac;
    this.mergeable = hasFeature(core.features, NetFeature.MRG_RXBUF);
    this.mtuBytes = hasFeature(core.features, NetFeature.MTU) ? cfg.mtu : DEFAULT_MTU;
    this.txSlotSize = NET_HDR_SIZE + plainFrameLimit(this.mtuBytes);
  }

  /** Initialize the device behind `transport` (§3.1.1, §5.1.5), post receive buffers, return the driver. */
  static async open(transport: DriverTransport, options: NetDriverOptions = {}): Promise<NetDriver> {
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
      const driver = new NetDriver(core, cfg, pairs, rxBufferSize, inbox);
      core.onConfigChange(() => void driver.configChanged().catch((err: unknown) => core.log.warn({ err }, 'net: configuration change failed')));
      await driver.chooseAddress(options.mac);
      driver.postReceiveBuffers(1);
      if (options.queuePairs !== undefined && options.queuePairs !== 1) await driver.setQueuePairs(options.queuePairs);
      return driver;
    } catch (err) {
      await core.close();
      throw err;
    }
  }

  get features(): bigint {
    return this.core.features;
  }

  /** The address this interface uses as its source. */
  get mac(): Uint8Array {
    return this.address.slice();
  }

  /** Link state: VIRTIO_NET_S_LINK_UP with STATUS negotiated, else always up (§5.1.5). */
  get linkUp(): boolean {
    return !hasFeature(this.features, NetFeature.STATUS) || (this.cfg.status & NetStatus.LINK_UP) !== 0;
  }

  /** The MTU: the device's with VIRTIO_NET_F_MTU, else 1500. */
  get mtu(): number {
    return this.mtuBytes;
  }

  /** The configuration space as last read. */
  get config(): NetConfig {
    return this.cfg;
  }

  get queuePairs(): number {
    return this.pairsInUse;
  }

  /** Call `listener` when the link goes up or down. */
  onLinkChange(listener: (up: boolean) => void): void {
    this.linkListeners.push(listener);
  }

  /**
   * Call `listener` when the device asks for an announcement (VIRTIO_NET_S_ANNOUNCE, after a
   * migration): it sends its gratuitous frames; the driver acknowledges once it has finished.
   */
  onAnnounce(listener: () => void | Promise<void>): void {
    this.announceListeners.push(listener);
  }

  /** Transmit one Ethernet frame (without virtio_net_hdr); resolves when the device has taken it. */
  async send(frame: Uint8Array, options: SendOptions = {}): Promise<void> {
    const meta = options.meta ?? NO_OFFLOAD;
    const pair = options.pair ?? 0;
    if (!Number.isInteger(pair) || pair < 0 || pair >= this.pairsInUse) {
      throw new RangeError(`net: queue pair ${pair} is not in use (${this.pairsInUse} in use)`);
    }
    const limit = meta.gsoType === GsoType.NONE ? this.txSlotSize - NET_HDR_SIZE : MAX_GSO_FRAME;
    if (frame.length < ETH_HLEN || frame.length > limit) {
      throw new RangeError(`net: a frame of ${frame.length} bytes is outside ${ETH_HLEN}..${limit} bytes`);
    }
    const bytes = NET_HDR_SIZE + frame.length;
    const { dma, memory } = this.core.transport;
    const slotSize = this.txSlotSize;
    const pooled = bytes <= slotSize;
    const addr = pooled ? await this.takeTxSlot() : dma.alloc(bytes, 16);
    if (addr === undefined) throw new Error(`net: DMA memory exhausted sending a frame of ${frame.length} bytes`);
    try {
      const block = memory.slice(addr, bytes);
      encodeNetHeader(meta, 0, block);
      block.set(frame, NET_HDR_SIZE);
      await this.core.queue(2 * pair + 1).submit([{ addr, len: bytes }], []);
      this.counters.txPackets++;
      this.counters.txBytes += frame.length;
    } finally {
      if (pooled) this.putTxSlot(addr);
      else dma.free(addr);
    }
  }

  /** The next received frame; undefined once the driver is closed. */
  next(): Promise<ReceivedFrame | undefined> {
    const f = this.inbox.shift();
    if (f !== undefined || this.closed) return Promise.resolve(f);
    return new Promise((resolve) => this.readers.push(resolve));
  }

  /** Received frames, in arrival order, until the driver is closed. */
  async *receive(): AsyncGenerator<ReceivedFrame> {
    for (let f = await this.next(); f !== undefined; f = await this.next()) yield f;
  }

  /**
   * Join this interface to `port` as a bridge member: every frame it receives is sent out of
   * the port and every frame arriving at the port is transmitted, with promiscuous mode on when
   * the device supports it. This puts a device reached through any transport (a vhost-user
   * front-end, say) on a switch. The bridge takes every received frame: do not also call
   * receive(). It ends when the driver closes.
   */
  async bridge(port: NetPort): Promise<void> {
    if (hasFeature(this.features, NetFeature.CTRL_RX)) await this.setPromiscuous(true);
    port.onReceive((frame, meta) => {
      this.send(frame, { meta }).catch(() => this.counters.txFailed++);
    });
    void (async () => {
      for await (const f of this.receive()) port.send(f.frame, f.meta);
    })();
  }

  /** Frames received and not yet taken. */
  get pending(): number {
    return this.inbox.length;
  }

  /** VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (§5.1.6.5.5): use `pairs` queue pairs; receive buffers are posted first. */
  async setQueuePairs(pairs: number): Promise<void> {
    this.require(NetFeature.MQ, 'setting queue pairs');
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > this.maxQueuePairs) {
      throw new RangeError(`net: queue pair count ${pairs} is not an integer from 1 to ${this.maxQueuePairs}`);
    }
    this.postReceiveBuffers(pairs);
    await this.command(CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, u16(pairs), `setting ${pairs} queue pairs`);
    this.pairsInUse = pairs;
  }

  async setPromiscuous(on: boolean): Promise<void> {
    await this.rxMode(CtrlRx.PROMISC, on, 'promiscuous mode');
  }

  async setAllMulticast(on: boolean): Promise<void> {
    await this.rxMode(CtrlRx.ALLMULTI, on, 'all-multicast mode');
  }

  async setAllUnicast(on: boolean): Promise<void> {
    await this.rxMode(CtrlRx.ALLUNI, on, 'all-unicast mode');
  }

  async setNoMulticast(on: boolean): Promise<void> {
    await this.rxMode(CtrlRx.NOMULTI, on, 'no-multicast mode');
  }

  async setNoUnicast(on: boolean): Promise<void> {
    await this.rxMode(CtrlRx.NOUNI, on, 'no-unicast mode');
  }

  async setNoBroadcast(on: boolean): Promise<void> {
    await this.rxMode(CtrlRx.NOBCAST, on, 'no-broadcast mode');
  }

  /** VIRTIO_NET_CTRL_MAC_TABLE_SET: the extra unicast and multicast addresses to receive. */
  async setMacTable(table: MacTable): Promise<void> {
    this.require(NetFeature.CTRL_RX, 'setting the MAC table');
    for (const mac of [...table.unicast, ...table.multicast]) {
      if (mac.length !== MAC_SIZE) throw new RangeError(`net: a MAC table entry of ${mac.length} bytes is not ${MAC_SIZE} bytes long`);
    }
    await this.command(CtrlClass.MAC, CtrlMac.TABLE_SET, encodeMacTable(table), 'setting the MAC table');
  }

  /** VIRTIO_NET_CTRL_MAC_ADDR_SET: receive on (and send from) `mac`. */
  async setMac(mac: string | Uint8Array): Promise<void> {
    const bytes = typeof mac === 'string' ? parseMac(mac) : mac.slice();
    if (bytes.length !== MAC_SIZE) throw new RangeError(`net: a MAC address of ${bytes.length} bytes is not ${MAC_SIZE} bytes long`);
    this.require(NetFeature.CTRL_MAC_ADDR, 'setting the MAC address');
    await this.command(CtrlClass.MAC, CtrlMac.ADDR_SET, bytes, `setting the MAC address to ${formatMac(bytes)}`);
    this.address = bytes;
  }

  /** VIRTIO_NET_CTRL_VLAN_ADD / DEL. */
  async setVlan(id: number, member: boolean): Promise<void> {
    if (!Number.isInteger(id) || id < 0 || id > VLAN_ID_MAX) throw new RangeError(`net: VLAN id ${id} is not an integer from 0 to ${VLAN_ID_MAX}`);
    this.require(NetFeature.CTRL_VLAN, 'VLAN filtering');
    await this.command(CtrlClass.VLAN, member ? CtrlVlan.ADD : CtrlVlan.DEL, u16(id), `${member ? 'adding' : 'removing'} VLAN ${id}`);
  }

  /** VIRTIO_NET_CTRL_ANNOUNCE_ACK (done automatically after the onAnnounce listeners). */
  async ackAnnounce(): Promise<void> {
    this.require(NetFeature.GUEST_ANNOUNCE, 'acknowledging an announcement');
    await this.command(CtrlClass.ANNOUNCE, CtrlAnnounce.ACK, new Uint8Array(0), 'acknowledging an announcement');
  }

  /** VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: enable exactly the receive offloads in `offloads` (feature bit mask). */
  async setGuestOffloads(offloads: bigint): Promise<void> {
    this.require(NetFeature.CTRL_GUEST_OFFLOADS, 'setting guest offloads');
    const data = new Uint8Array(8);
    new DataView(data.buffer).setBigUint64(0, offloads, true);
    await this.command(CtrlClass.GUEST_OFFLOADS, CtrlGuestOffloads.SET, data, `setting guest offloads 0x${offloads.toString(16)}`);
  }

  /**
   * Send a raw control command and return its ack (for tests of a device's refusals); the
   * typed methods above are the interface to use.
   */
  async rawCommand(cls: number, cmd: number, data: Uint8Array): Promise<number> {
    this.require(NetFeature.CTRL_VQ, 'a control command');
    const bytes = CTRL_HDR_SIZE + data.length + 1;
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(bytes, 16);
    if (addr === undefined) throw new Error(`net: DMA memory exhausted for a control command of ${bytes} bytes`);
    try {
      const block = memory.slice(addr, bytes);
      block[0] = cls;
      block[1] = cmd;
      block.set(data, CTRL_HDR_SIZE);
      block[bytes - 1] = ACK_UNWRITTEN;
      await this.core.queue(this.ctrlIndex).submit([{ addr, len: bytes - 1 }], [{ addr: addr + bytes - 1, len: 1 }]);
      return block[bytes - 1];
    } finally {
      dma.free(addr);
    }
  }

  /** Reset the device and give back its memory; pending sends fail and `receive()` ends. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.core.close();
    for (const read of this.readers.splice(0)) read(undefined);
    for (const wake of this.txWaiters.splice(0)) wake();
    for (const addr of this.txSlots.splice(0)) this.core.transport.dma.free(addr);
  }

  // --- internals ---

  /** §5.1.2: the control queue follows the N pairs (N = 1 without MQ). */
  private get ctrlIndex(): number {
    return 2 * (hasFeature(this.features, NetFeature.MQ) ? this.maxQueuePairs : 1);
  }

  private require(bit: number, what: string): void {
    if (!hasFeature(this.features, bit)) {
      throw new Error(`net: ${what} needs VIRTIO_NET_F_${NET_FEATURE_NAMES[bit]}, which was not negotiated`);
    }
  }

  private async command(cls: number, cmd: number, data: Uint8Array, what: string): Promise<void> {
    const ack = await this.rawCommand(cls, cmd, data);
    if (ack !== CtrlAck.OK) throw new NetControlError(what, ack);
  }

  private async rxMode(cmd: number, on: boolean, what: string): Promise<void> {
    const extra = cmd !== CtrlRx.PROMISC && cmd !== CtrlRx.ALLMULTI;
    this.require(extra ? NetFeature.CTRL_RX_EXTRA : NetFeature.CTRL_RX, what);
    await this.command(CtrlClass.RX, cmd, Uint8Array.of(on ? 1 : 0), `turning ${what} ${on ? 'on' : 'off'}`);
  }

  /** §5.1.5: the device's MAC when it gives one, else the caller's or a random one, told to the device when it can hear it. */
  private async chooseAddress(wanted: string | Uint8Array | undefined): Promise<void> {
    const hasMac = hasFeature(this.features, NetFeature.MAC);
    const chosen = wanted === undefined ? (hasMac ? undefined : randomMac((b) => randomFillSync(b))) : typeof wanted === 'string' ? parseMac(wanted) : wanted.slice();
    if (chosen === undefined) return;
    if (hasFeature(this.features, NetFeature.CTRL_MAC_ADDR)) await this.setMac(chosen);
    else this.address = chosen;
  }

  /** Post receive buffers on every pair below `pairs` that has none yet. */
  private postReceiveBuffers(pairs: number): void {
    for (; this.posted < pairs; this.posted++) {
      const pair = this.posted;
      const queue = this.core.queue(2 * pair);
      const { dma } = this.core.transport;
      const addr = dma.alloc(queue.size * this.rxBufferSize, 16);
      if (addr === undefined) throw new Error(`net: DMA memory exhausted allocating ${queue.size} receive buffers of ${this.rxBufferSize} bytes`);
      const assembler: { current: Assembly | undefined } = { current: undefined };
      const cycles = Array.from({ length: queue.size }, (_, i) => this.recycle(queue, pair, addr + i * this.rxBufferSize, assembler));
      // The buffers stay posted until the device is reset; their memory then goes back.
      void Promise.all(cycles).then(() => dma.free(addr));
    }
  }

  /** Keep one receive buffer posted: hand each filling to `received`, post it again at once. */
  private async recycle(queue: RequestQueue, pair: number, addr: number, assembler: { current: Assembly | undefined }): Promise<void> {
    const memory = this.core.transport.memory;
    for (;;) {
      let len: number;
      try {
        len = await queue.submit([], [{ addr, len: this.rxBufferSize }]);
      } catch {
        return; // the queue failed or the driver closed
      }
      this.received(memory.slice(addr, len), pair, assembler);
    }
  }

  /** One used receive buffer (a view valid only during the call). */
  private received(buf: Uint8Array, pair: number, assembler: { current: Assembly | undefined }): void {
    const a = assembler.current;
    if (a !== undefined) {
      a.parts.push(buf.slice());
      a.bytes += buf.length;
      if (--a.left === 0) {
        assembler.current = undefined;
        const frame = new Uint8Array(a.bytes);
        let at = 0;
        for (const p of a.parts) {
          frame.set(p, at);
          at += p.length;
        }
        this.deliver(frame, a.meta, pair);
      }
      return;
    }
    if (buf.length < NET_HDR_SIZE) {
      this.counters.rxMalformed++;
      return;
    }
    const meta = decodeOffload(buf);
    // §5.1.6.4: num_buffers is 1 without MRG_RXBUF; with it, the buffers of one frame come together.
    const count = this.mergeable ? decodeNumBuffers(buf) : 1;
    if (count < 1 || count > this.core.queue(2 * pair).size) {
      this.counters.rxMalformed++;
      return;
    }
    const part = buf.slice(NET_HDR_SIZE);
    if (count === 1) this.deliver(part, meta, pair);
    else assembler.current = { meta, parts: [part], bytes: part.length, left: count - 1 };
  }

  private deliver(frame: Uint8Array, meta: Offload, pair: number): void {
    if (frame.length < ETH_HLEN) {
      this.counters.rxMalformed++;
      return;
    }
    this.counters.rxPackets++;
    this.counters.rxBytes += frame.length;
    const f: ReceivedFrame = { frame, meta, pair };
    const read = this.readers.shift();
    if (read !== undefined) read(f);
    else if (this.inbox.length < this.inboxLimit) this.inbox.push(f);
    else this.counters.rxInboxFull++;
  }

  private async configChanged(): Promise<void> {
    const before = this.linkUp;
    this.cfg = NET_CONFIG.decode(await this.core.readConfig(0, NET_CONFIG.size));
    if (hasFeature(this.features, NetFeature.MAC)) this.address = this.cfg.mac;
    if (this.linkUp !== before) for (const l of this.linkListeners) l(this.linkUp);
    if (hasFeature(this.features, NetFeature.GUEST_ANNOUNCE) && this.cfg.status & NetStatus.ANNOUNCE) {
      for (const l of this.announceListeners) await l();
      await this.ackAnnounce();
    }
  }

  /** A transmit buffer; at most one per transmit ring entry exist, so a burst waits instead of exhausting memory. */
  private async takeTxSlot(): Promise<number | undefined> {
    for (;;) {
      const addr = this.txSlots.pop();
      if (addr !== undefined) return addr;
      if (this.closed) return undefined;
      if (this.txSlotsMade < this.core.queue(1).size * this.pairsInUse) {
        const made = this.core.transport.dma.alloc(this.txSlotSize, 16);
        if (made !== undefined) this.txSlotsMade++;
        return made;
      }
      await new Promise<void>((resolve) => this.txWaiters.push(resolve));
    }
  }

  private putTxSlot(addr: number): void {
    if (this.closed) {
      this.core.transport.dma.free(addr);
      return;
    }
    this.txSlots.push(addr);
    this.txWaiters.shift()?.();
  }
}

function u16(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, v >>> 8);
}
