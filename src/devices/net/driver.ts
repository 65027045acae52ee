/**
 * The virtio-net driver (§5.1): an Ethernet interface over any DriverTransport. Frames go out
 * with `send`, come in through `receive()`, and the control queue programs filters, address,
 * queue pairs and offloads. Each concern has its module, as the device half does: bringing the
 * device up (driver-start.ts), the receive path with its posted buffers, reassembly and inbox
 * (driver-rx.ts), the transmit buffer pool (driver-tx.ts), control commands (driver-control.ts)
 * and the counters (counters.ts). NetDriver ties them to one interface and follows the
 * configuration space: link state, address, announcements.
 *
 * The device is not trusted: used lengths are clamped by RequestQueue, impossible receive
 * headers are dropped and counted, and configuration values are checked before use.
 */
import { randomFillSync } from 'node:crypto';
import { hasFeature } from '../../virtio/constants.ts';
import type { VirtioDriver } from '../../virtio/driver-core.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { NetDriverCounters } from './counters.ts';
import { NetControl } from './driver-control.ts';
import { NetReceiver, type ReceivedFrame } from './driver-rx.ts';
import { type NetDriverOptions, startDevice } from './driver-start.ts';
import { type FrameWriter, NetTransmitter } from './driver-tx.ts';
import type { NetPort } from './port.ts';
import { CtrlRx, DEFAULT_MTU, type MacTable, NET_CONFIG, NO_OFFLOAD, type NetConfig, NetFeature, NetStatus, type Offload, parseMac, randomMac } from './wire.ts';

export { NetDriverCounters } from './counters.ts';
export { NetControlError } from './driver-control.ts';
export type { ReceivedFrame } from './driver-rx.ts';
export type { FrameWriter } from './driver-tx.ts';
export { NET_DRIVER_FEATURES, type NetDriverOptions } from './driver-start.ts';

export interface SendOptions {
  /** Offload metadata for the header (default none: a complete frame). */
  readonly meta?: Offload;
  /** Queue pair to transmit on (default 0). */
  readonly pair?: number;
}

/** The defaults, one object rather than a fresh `{}` per frame sent. */
const DEFAULT_SEND: SendOptions = {};

export class NetDriver {
  readonly counters = new NetDriverCounters();
  private cfg: NetConfig;
  private address: Uint8Array;
  private pairsInUse = 1;
  private readonly linkListeners: ((up: boolean) => void)[] = [];
  private readonly announceListeners: (() => void | Promise<void>)[] = [];
  private closed = false;
  /**
   * The MTU, fixed at start: §5.1.4.1 forbids the device to change it once set, and a copy keeps
   * a device that does anyway from resizing buffers in use.
   */
  private readonly mtuBytes: number;
  private readonly control: NetControl;
  private readonly rx: NetReceiver;
  private readonly tx: NetTransmitter;

  private constructor(
    /** The generic driver underneath: its queues carry what the methods here build. */
    readonly core: VirtioDriver,
    cfg: NetConfig,
    /** Queue pairs set up: N of §5.1.2, bounded by what the driver uses (driver-start.ts). */
    readonly maxQueuePairs: number,
    ctrlIndex: number,
    rxBufferSize: number,
    inbox: number,
  ) {
    this.cfg = cfg;
    this.address = cfg.mac;
    this.mtuBytes = hasFeature(core.features, NetFeature.MTU) ? cfg.mtu : DEFAULT_MTU;
    this.control = new NetControl(core, maxQueuePairs, ctrlIndex);
    this.rx = new NetReceiver(core, hasFeature(core.features, NetFeature.MRG_RXBUF), rxBufferSize, inbox, this.counters);
    this.tx = new NetTransmitter(core, this.mtuBytes, this.counters, maxQueuePairs);
  }

  /** Initialize the device behind `transport` (§3.1.1, §5.1.5), post receive buffers, return the driver. */
  static async open(transport: DriverTransport, options: NetDriverOptions = {}): Promise<NetDriver> {
    const { core, cfg, pairs, ctrlIndex, rxBufferSize, inbox } = await startDevice(transport, options);
    try {
      const driver = new NetDriver(core, cfg, pairs, ctrlIndex, rxBufferSize, inbox);
      core.onConfigChange(() => void driver.configChanged().catch((err: unknown) => core.log.warn({ err }, 'net: configuration change failed')));
      await driver.chooseAddress(options.mac);
      driver.rx.post(1);
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
  async send(frame: Uint8Array, options: SendOptions = DEFAULT_SEND): Promise<void> {
    await this.tx.send(frame, options.meta ?? NO_OFFLOAD, this.pairOf(options), this.pairsInUse);
  }

  /**
   * Copy one Ethernet frame (up to the MTU: no GSO beyond it) into a free transmit buffer and
   * queue it, without waiting: false when every buffer is in flight, then whenWritable() says
   * when to try again. Nothing is allocated per frame; a frame the device never takes (the
   * driver closed or was reset) is counted in txFailed. `frame` may be reused at once. Throws
   * when no frame can go out again: the driver is closed, or the transmit queue failed
   * (`net: transmitq net.q1 failed: <why>` for pair 0: DEVICE_NEEDS_RESET, the back-end gone, a
   * ring fault).
   */
  trySend(frame: Uint8Array, options: SendOptions = DEFAULT_SEND): boolean {
    return this.tx.trySend(frame, options.meta ?? NO_OFFLOAD, this.pairOf(options), this.pairsInUse);
  }

  /**
   * trySend() without the copy: `write(buffer, length, again)` writes a frame of `length` bytes
   * (up to the MTU) into a free transmit buffer itself, the way a NIC driver builds a packet in
   * its DMA buffer; the buffer is valid during the call only. `again` says the same `write`
   * function wrote the frame the buffer still holds, so a sender repeating one frame, or a
   * template, writes it once per buffer and then only the bytes that change. False, with
   * `write` not called, when every buffer is in flight; whenWritable() says when to try again. A
   * writer that throws sends nothing and its error is thrown here. Throws as trySend() does once
   * no frame can go out again, with `write` not called.
   */
  trySendInPlace(length: number, write: FrameWriter, options: SendOptions = DEFAULT_SEND): boolean {
    return this.trySendBurst(1, length, write, options) === 1;
  }

  /**
   * trySendInPlace() for up to `count` frames at once (1 up to the transmit queue's size), the
   * way a NIC driver's burst transmit goes (DPDK's tx_burst): `write` fills each free buffer in
   * turn, then all are queued. Returns how many frames went out, 0 (with `write` not called)
   * when every buffer is in flight. A writer that throws sends nothing of the burst and its
   * error is thrown here; a writer may not call trySendInPlace() or trySendBurst() itself.
   * Throws as trySend() does once no frame can go out again, with `write` not called: a sender
   * looping on it while it returns more than 0 and awaiting whenWritable() otherwise ends there.
   */
  trySendBurst(count: number, length: number, write: FrameWriter, options: SendOptions = DEFAULT_SEND): number {
    return this.tx.trySendBurst(count, length, write, options.meta ?? NO_OFFLOAD, this.pairOf(options), this.pairsInUse);
  }

  /**
   * Resolves when trySend() may find a free transmit buffer again, or throw: a failed transmit
   * queue gives back every buffer it held, so a sender waiting here goes on to hear of it.
   */
  whenWritable(): Promise<void> {
    return this.tx.whenWritable(this.pairsInUse);
  }

  private pairOf(options: SendOptions): number {
    const pair = options.pair ?? 0;
    if (!Number.isInteger(pair) || pair < 0 || pair >= this.pairsInUse) {
      throw new RangeError(`net: queue pair ${pair} is not in use (${this.pairsInUse} in use)`);
    }
    return pair;
  }

  /** The next received frame; undefined once the driver is closed. */
  next(): Promise<ReceivedFrame | undefined> {
    return this.rx.next();
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
    // Frames sent with send() and still waiting for a transmit buffer: while there are any, later
    // frames queue behind them rather than overtake them through trySend().
    let waiting = 0;
    const sent = (): void => void waiting--;
    const lost = (): void => {
      waiting--;
      this.counters.txFailed++;
    };
    port.onReceive((frame, meta) => {
      // The frame is only lent for this call (port.ts): copied straight into a free transmit
      // buffer when there is one, else into a copy of its own that send() waits with.
      if (waiting === 0 && frame.length <= this.tx.plainLimit) {
        try {
          if (this.trySend(frame, { meta })) return;
        } catch {
          // A frame the driver refuses (too short, the driver closed, its transmit queue failed) is
          // lost, as a port drops.
          this.counters.txFailed++;
          return;
        }
      }
      waiting++;
      this.send(frame.slice(), { meta }).then(sent, lost);
    });
    void (async () => {
      for await (const f of this.receive()) port.send(f.frame, f.meta);
    })();
  }

  /** Frames received and not yet taken. */
  get pending(): number {
    return this.rx.pending;
  }

  /** VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (§5.1.6.5.5): use `pairs` queue pairs; receive buffers are posted first. */
  async setQueuePairs(pairs: number): Promise<void> {
    this.control.checkQueuePairs(pairs);
    this.rx.post(pairs);
    await this.control.setQueuePairs(pairs);
    this.pairsInUse = pairs;
  }

  async setPromiscuous(on: boolean): Promise<void> {
    await this.control.setRxMode(CtrlRx.PROMISC, on);
  }

  async setAllMulticast(on: boolean): Promise<void> {
    await this.control.setRxMode(CtrlRx.ALLMULTI, on);
  }

  async setAllUnicast(on: boolean): Promise<void> {
    await this.control.setRxMode(CtrlRx.ALLUNI, on);
  }

  async setNoMulticast(on: boolean): Promise<void> {
    await this.control.setRxMode(CtrlRx.NOMULTI, on);
  }

  async setNoUnicast(on: boolean): Promise<void> {
    await this.control.setRxMode(CtrlRx.NOUNI, on);
  }

  async setNoBroadcast(on: boolean): Promise<void> {
    await this.control.setRxMode(CtrlRx.NOBCAST, on);
  }

  /** VIRTIO_NET_CTRL_MAC_TABLE_SET: the extra unicast and multicast addresses to receive. */
  async setMacTable(table: MacTable): Promise<void> {
    await this.control.setMacTable(table);
  }

  /** VIRTIO_NET_CTRL_MAC_ADDR_SET: receive on (and send from) `mac`. */
  async setMac(mac: string | Uint8Array): Promise<void> {
    const bytes = typeof mac === 'string' ? parseMac(mac) : mac.slice();
    await this.control.setMac(bytes);
    this.address = bytes;
  }

  /** VIRTIO_NET_CTRL_VLAN_ADD / DEL. */
  async setVlan(id: number, member: boolean): Promise<void> {
    await this.control.setVlan(id, member);
  }

  /** VIRTIO_NET_CTRL_ANNOUNCE_ACK (done automatically after the onAnnounce listeners). */
  async ackAnnounce(): Promise<void> {
    await this.control.ackAnnounce();
  }

  /** VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: enable exactly the receive offloads in `offloads` (feature bit mask). */
  async setGuestOffloads(offloads: bigint): Promise<void> {
    await this.control.setGuestOffloads(offloads);
  }

  /**
   * Send a raw control command and return its ack (for tests of a device's refusals); the
   * typed methods above are the interface to use.
   */
  async rawCommand(cls: number, cmd: number, data: Uint8Array): Promise<number> {
    return this.control.rawCommand(cls, cmd, data);
  }

  /** Reset the device and give back its memory; pending sends fail and `receive()` ends. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.core.close();
    this.rx.close();
    this.tx.close();
  }

  /** §5.1.5: the device's MAC when it gives one, else the caller's or a random one, told to the device when it can hear it. */
  private async chooseAddress(wanted: string | Uint8Array | undefined): Promise<void> {
    const hasMac = hasFeature(this.features, NetFeature.MAC);
    const chosen = wanted === undefined ? (hasMac ? undefined : randomMac((b) => randomFillSync(b))) : typeof wanted === 'string' ? parseMac(wanted) : wanted.slice();
    if (chosen === undefined) return;
    if (hasFeature(this.features, NetFeature.CTRL_MAC_ADDR)) await this.setMac(chosen);
    else this.address = chosen;
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
}
