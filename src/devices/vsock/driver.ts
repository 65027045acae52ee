/**
 * The guest driver of the socket device (§5.10): stream connections to the host as Node
 * Duplex streams, opened with connect() or accepted from listen(). Both ways are bounded by
 * credit (credit.ts): a write waits until the host has room for it, and the host may send only
 * as much as the stream's reader has taken, so a slow reader throttles the sender.
 *
 * SEQPACKET connections (VIRTIO_VSOCK_F_SEQPACKET, §5.10.6.6), when the device offers them:
 * connectSeqpacket() / listenSeqpacket() give object-mode Duplexes of whole messages, in the
 * shapes of the device's host ends (seqpacket-stream.ts): writing takes a SeqpacketMessage (or
 * bare bytes, no record mark), reading yields SeqpacketMessage, so one pipes into the other.
 * - Sending: a message goes as RW packets within the host's credit, EOM on the last, EOR on it
 *   when the message ends a record. As Linux refuses one larger than the peer's buf_alloc
 *   (EMSGSIZE), such a write fails with OversizeMessage: it could never be delivered whole.
 * - Receiving: parts are held until the one flagged EOM, then delivered as one message; the
 *   credit they use is given back once the reader took the message. The advertised buffer is
 *   MAX_MESSAGE, as the device's; a message growing past it resets the connection (counted).
 *   Empty parts and empty messages are not kept: credit does not count them, so a device
 *   could otherwise grow the held message or the read buffer without bound.
 * Packets from the device are checked as the device checks the guest's: the CIDs, the op, the
 * type (SEQPACKET only once negotiated, and always its connection's), the length, the credit;
 * a packet breaking a rule is answered with RST in its own type and resets its connection.
 */
import { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { DeviceId, featureBit } from '../../virtio/constants.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
import { EventReceiver } from '../../virtio/event-receiver.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { Credit } from './credit.ts';
import {
  EVENT_BYTES, EVENTQ, HEADER_BYTES, HOST_CID, MAX_MESSAGE, MessageParts, Op, OversizeMessage, type PacketHeader, RXQ, Seq, type SeqpacketMessage,
  Shutdown, SocketType, TXQ, VSOCK_CONFIG, VsockFeature, decodeHeader, encodeHeader,
} from './wire.ts';

export interface VsockDriverOptions {
  readonly queueSize?: number;
  /** Receive buffer per connection advertised to the host (default 256 KiB). */
  readonly bufAlloc?: number;
  readonly log?: Logger;
}

/** Payload bytes per rx buffer (Linux posts 4 KiB buffers too). */
const RX_PAYLOAD = 4096;
/** Largest payload of one tx packet. */
const TX_CHUNK = 64 * 1024;
const FIRST_EPHEMERAL_PORT = 49152;
/** RST answers to packets for no connection that may wait on the tx queue at once. */
const MAX_REPLIES = 64;

/** What a packet's header says of its connection: both ports, the type, our credit. */
interface Endpoint {
  readonly localPort: number;
  readonly remotePort: number;
  readonly type: number;
  readonly credit: Credit;
}

/** Connection state shared by both socket types: ports, credit, and the waits on the host. */
abstract class GuestConnection extends Duplex implements Endpoint {
  abstract readonly type: number;
  readonly credit: Credit;
  /** A write waiting for credit. */
  waiter: (() => void) | undefined;
  connected: ((err?: Error) => void) | undefined;

  constructor(
    protected readonly driver: VsockDriver,
    readonly localPort: number,
    readonly remotePort: number,
    bufAlloc: number,
    objectMode: boolean,
  ) {
    // One message buffered for the reader: the rest waits in the host's credit.
    super(objectMode ? { allowHalfOpen: true, objectMode, highWaterMark: 1 } : { allowHalfOpen: true });
    this.credit = new Credit(bufAlloc);
  }

  get key(): string {
    return `${this.localPort}:${this.remotePort}`;
  }

  /** The payload of an RW packet whose length fits the credit given. */
  abstract deliver(bytes: Uint8Array, flags: number): void;

  override _read(): void {
    // Data comes when the host sends it; consumption is counted in read().
  }

  /** Bytes the reader took since the last call. */
  protected abstract taken(): number;

  /** Every consumer (read(), 'data', pipe, async iteration) takes data through here. */
  override read(size?: number): unknown {
    const chunk: unknown = super.read(size);
    const n = this.taken();
    if (n > 0) this.credit.forwarded(n);
    this.creditUpdateIfDue();
    return chunk;
  }

  creditUpdateIfDue(): void {
    if (this.credit.updateDue && !this.destroyed) this.driver.packet(this, Op.CREDIT_UPDATE);
  }

  override _final(done: (err?: Error | null) => void): void {
    this.driver.packet(this, Op.SHUTDOWN, Shutdown.SEND);
    done();
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.driver.closed(this);
    done(err);
  }
}

class GuestSocket extends GuestConnection {
  readonly type = SocketType.STREAM;
  private rxCnt = 0;

  constructor(driver: VsockDriver, localPort: number, remotePort: number, bufAlloc: number) {
    super(driver, localPort, remotePort, bufAlloc, false);
  }

  /** Host data: buffered until read; counted as forwarded only when the reader took it. */
  deliver(bytes: Uint8Array): void {
    this.rxCnt += bytes.length;
    this.push(Buffer.from(bytes));
  }

  protected taken(): number {
    const n = this.rxCnt - this.readableLength;
    this.rxCnt -= n;
    return n;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    void this.driver.sendData(this, new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length)).then(() => done(), done);
  }
}

/** A SEQPACKET connection (§5.10.6.6): whole messages each way, see the module comment. */
class GuestSeqpacket extends GuestConnection {
  readonly type = SocketType.SEQPACKET;
  /** The host's message so far, waiting for EOM. */
  private readonly parts = new MessageParts();
  /** Sizes of the messages pushed and not yet taken by the reader, oldest first. */
  private readonly unread: number[] = [];

  constructor(driver: VsockDriver, localPort: number, remotePort: number, bufAlloc: number) {
    // The receive buffer is one message at most, as the device's (wire.ts MAX_MESSAGE).
    super(driver, localPort, remotePort, Math.min(bufAlloc, MAX_MESSAGE), true);
  }

  /** Whether `n` more bytes keep the message within the limit. */
  fits(n: number): boolean {
    return this.parts.bytes + n <= MAX_MESSAGE;
  }

  deliver(bytes: Uint8Array, flags: number): void {
    this.parts.add(bytes);
    if ((flags & Seq.EOM) === 0) {
      // The rest of the message may need credit that earlier messages freed and the host has
      // not heard of yet; nothing else would tell it while this message is incomplete.
      this.creditUpdateIfDue();
      return;
    }
    const message = this.parts.take();
    if (message.length === 0) {
      // An empty message uses no credit, so nothing would bound a flood of them in the read buffer.
      this.driver.counts.emptyMessages++;
      return;
    }
    this.unread.push(message.length);
    const delivered: SeqpacketMessage = { bytes: message, eor: (flags & Seq.EOR) !== 0 };
    this.push(delivered);
  }

  protected taken(): number {
    let n = 0;
    // readableLength counts messages in object mode; those not in it were taken.
    while (this.unread.length > this.readableLength) n += this.unread.shift() ?? 0;
    return n;
  }

  override _write(chunk: SeqpacketMessage | Uint8Array, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    const message: SeqpacketMessage = chunk instanceof Uint8Array ? { bytes: chunk, eor: false } : chunk;
    void this.driver.sendMessage(this, message).then(() => done(), done);
  }
}

export class VsockDriver {
  /** The guest's CID, from the configuration space. */
  guestCid: number;
  private readonly sockets = new Map<string, GuestConnection>();
  /** Listeners by port, one map per socket type: a REQUEST finds only its own type's. */
  private readonly listeners = new Map<number, Map<number, (socket: Duplex) => void>>([
    [SocketType.STREAM, new Map()],
    [SocketType.SEQPACKET, new Map()],
  ]);
  private nextPort = FIRST_EPHEMERAL_PORT;
  private readonly receivers: EventReceiver[];
  /** The device reset every connection (TRANSPORT_RESET events seen). */
  transportResets = 0;
  /**
   * Packets from the device that broke a rule (answered with RST), SEQPACKET messages above
   * MAX_MESSAGE (their connection reset), empty SEQPACKET messages (dropped), RST answers
   * dropped because too many were still being sent.
   */
  readonly counts = { badPackets: 0, oversizeMessages: 0, emptyMessages: 0, droppedReplies: 0 };
  /** RST answers to packets for no connection still on the tx queue. */
  private repliesInFlight = 0;

  private constructor(
    readonly core: VirtioDriver,
    guestCid: number,
    private readonly bufAlloc: number,
  ) {
    this.guestCid = guestCid;
    const { memory, dma } = core.transport;
    this.receivers = [
      new EventReceiver(core.queue(RXQ), memory, dma, { bufferSize: HEADER_BYTES + RX_PAYLOAD, log: core.log, onBuffer: (b) => this.received(b) }),
      new EventReceiver(core.queue(EVENTQ), memory, dma, { bufferSize: EVENT_BYTES, log: core.log, onBuffer: () => this.transportReset() }),
    ];
  }

  static async open(transport: DriverTransport, options: VsockDriverOptions = {}): Promise<VsockDriver> {
    const core = await VirtioDriver.start(transport, {
      name: 'vsock',
      deviceId: DeviceId.VSOCK,
      // §5.10.3: SEQPACKET is taken whenever the device offers it.
      features: FRAMEWORK_FEATURES | featureBit(VsockFeature.STREAM) | featureBit(VsockFeature.SEQPACKET),
      queues: 3,
      queueSize: options.queueSize,
      log: options.log,
    });
    try {
      const cid = VSOCK_CONFIG.get(await core.readConfig(0, VSOCK_CONFIG.size), 'guest_cid');
      return new VsockDriver(core, cid, options.bufAlloc ?? 256 * 1024);
    } catch (err) {
      // The device is reset and the rings given back, as every driver here does when it gives up.
      await core.close();
      throw err;
    }
  }

  /** The device accepted SEQPACKET connections (VIRTIO_VSOCK_F_SEQPACKET negotiated). */
  get seqpacket(): boolean {
    return (this.core.features & featureBit(VsockFeature.SEQPACKET)) !== 0n;
  }

  /** A stream connection to host port `port`; rejects when the host refuses (RST). */
  connect(port: number): Promise<Duplex> {
    return this.open(new GuestSocket(this, this.allocatePort(), port, this.bufAlloc));
  }

  /**
   * A SEQPACKET connection to host port `port`: an object-mode Duplex of whole messages (see
   * the module comment); rejects when the host refuses or the device has no SEQPACKET.
   */
  connectSeqpacket(port: number): Promise<Duplex> {
    if (!this.seqpacket) return Promise.reject(new Error('vsock: the device does not offer SEQPACKET connections (VIRTIO_VSOCK_F_SEQPACKET)'));
    return this.open(new GuestSeqpacket(this, this.allocatePort(), port, this.bufAlloc));
  }

  /** Accept host stream connections to guest port `port`. */
  listen(port: number, onConnection: (socket: Duplex) => void): void {
    this.listeners.get(SocketType.STREAM)?.set(port, onConnection);
  }

  /** Accept host SEQPACKET connections to guest port `port`, as connectSeqpacket()'s Duplexes. */
  listenSeqpacket(port: number, onConnection: (socket: Duplex) => void): void {
    if (!this.seqpacket) throw new Error('vsock: the device does not offer SEQPACKET connections (VIRTIO_VSOCK_F_SEQPACKET)');
    this.listeners.get(SocketType.SEQPACKET)?.set(port, onConnection);
  }

  async close(): Promise<void> {
    for (const s of [...this.sockets.values()]) this.fail(s, new Error('vsock: the driver was closed'), false);
    await this.core.close();
    await Promise.all(this.receivers.map((r) => r.stopped));
  }

  // ---- used by the sockets ---------------------------------------------------------------------

  /** Send `bytes` as RW packets, each within the host's credit; resolves once all are on the ring. */
  async sendData(socket: GuestConnection, bytes: Uint8Array, lastFlags = 0): Promise<void> {
    for (let at = 0; at < bytes.length; ) {
      if (socket.destroyed) throw new Error('vsock: the connection was reset');
      const free = socket.credit.peerFree;
      if (free === 0) {
        await new Promise<void>((resolve) => (socket.waiter = resolve));
        continue;
      }
      const n = Math.min(free, TX_CHUNK, bytes.length - at);
      socket.credit.sent(n);
      await this.transmit(socket, Op.RW, at + n === bytes.length ? lastFlags : 0, bytes.subarray(at, at + n));
      at += n;
    }
  }

  /**
   * One SEQPACKET message (§5.10.6.6): its RW packets in order, EOM (and EOR when it ends a
   * record) on the last. An empty message is one empty packet, which needs no credit.
   */
  async sendMessage(socket: GuestSeqpacket, message: SeqpacketMessage): Promise<void> {
    const { bytes } = message;
    // As Linux's seqpacket enqueue: a message must fit the peer's whole buffer to be delivered.
    const limit = Math.min(socket.credit.peerBuffer, MAX_MESSAGE);
    if (bytes.length > limit) throw new OversizeMessage(bytes.length, limit);
    const last = Seq.EOM | (message.eor ? Seq.EOR : 0);
    if (bytes.length === 0) await this.transmit(socket, Op.RW, last, bytes);
    else await this.sendData(socket, bytes, last);
  }

  /** A control packet; a failure to send means the device is gone, which fails every socket anyway. */
  packet(socket: Endpoint, op: number, flags = 0): void {
    void this.transmit(socket, op, flags, new Uint8Array(0)).catch(() => {});
  }

  closed(socket: GuestConnection): void {
    if (this.sockets.get(socket.key) !== socket) return;
    this.sockets.delete(socket.key);
    // §5.10.6.4: closing both directions; the device answers with RST, which finds no socket.
    this.packet(socket, Op.SHUTDOWN, Shutdown.RCV | Shutdown.SEND);
  }

  private open(socket: GuestConnection): Promise<Duplex> {
    this.sockets.set(socket.key, socket);
    return new Promise((resolve, reject) => {
      socket.connected = (err) => {
        if (err === undefined) resolve(socket);
        else reject(err);
      };
      this.packet(socket, Op.REQUEST);
    });
  }

  private async transmit(socket: Endpoint, op: number, flags: number, payload: Uint8Array): Promise<void> {
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(HEADER_BYTES + payload.length, 8);
    if (addr === undefined) throw new Error(`vsock: DMA memory exhausted allocating a ${payload.length}-byte packet`);
    try {
      const header: PacketHeader = {
        srcCid: this.guestCid, dstCid: HOST_CID, srcPort: socket.localPort, dstPort: socket.remotePort, len: payload.length,
        type: socket.type, op, flags, bufAlloc: socket.credit.bufAlloc, fwdCnt: socket.credit.reported(),
      };
      memory.write(addr, encodeHeader(header));
      memory.write(addr + HEADER_BYTES, payload);
      await this.core.queue(TXQ).submit([{ addr, len: HEADER_BYTES + payload.length }], []);
    } finally {
      dma.free(addr);
    }
  }

  private allocatePort(): number {
    for (;;) {
      const port = this.nextPort;
      this.nextPort = port >= 0xffff_fffe ? FIRST_EPHEMERAL_PORT : port + 1;
      if (![...this.sockets.values()].some((s) => s.localPort === port)) return port;
    }
  }

  private received(bytes: Uint8Array): void {
    const h = decodeHeader(bytes);
    if (h === undefined || h.srcCid !== HOST_CID || h.dstCid !== this.guestCid || h.len !== bytes.length - HEADER_BYTES) {
      // Not from the host to us, or not its own length: nothing to answer (§5.10.6.1).
      this.counts.badPackets++;
      this.core.log.warn({ length: bytes.length }, 'vsock: a malformed packet from the device');
      return;
    }
    const socket = this.sockets.get(`${h.dstPort}:${h.srcPort}`);
    // §5.10.6.6: SEQPACKET only once negotiated; a packet's type must be its connection's.
    const typeKnown = h.type === SocketType.STREAM || (h.type === SocketType.SEQPACKET && this.seqpacket);
    if (!typeKnown || (socket !== undefined && socket.type !== h.type) || h.op === Op.INVALID || h.op > Op.CREDIT_REQUEST) {
      this.counts.badPackets++;
      if (h.op !== Op.RST) this.reply(h, Op.RST);
      if (socket !== undefined) this.reset(socket, new Error('vsock: the device broke the protocol'), false);
      return;
    }
    if (socket === undefined) {
      if (h.op === Op.REQUEST) this.accept(h);
      // §5.10.6.4: a packet for no connection is answered with RST (never an RST itself).
      else if (h.op !== Op.RST) this.reply(h, Op.RST);
      return;
    }
    socket.credit.peerUpdate(h.bufAlloc, h.fwdCnt);
    switch (h.op) {
      case Op.REQUEST:
        // A second REQUEST for a live connection: the device lost track of it.
        this.reset(socket, new Error('vsock: the device reopened a live connection'));
        return;
      case Op.RESPONSE:
        if (socket.connected === undefined) {
          this.reset(socket, new Error('vsock: the device answered a connection twice'));
          return;
        }
        socket.connected();
        socket.connected = undefined;
        break;
      case Op.RST:
        this.reset(socket, socket.connected !== undefined ? new Error(`vsock: host port ${socket.remotePort} refused the connection`) : new Error('vsock: the host reset the connection'), false);
        return;
      case Op.RW:
        if (socket.connected !== undefined) {
          this.reset(socket, new Error('vsock: the device sent data before accepting the connection'));
          return;
        }
        // Checked before credit, which such a message breaks too, to name the reason.
        if (socket instanceof GuestSeqpacket && !socket.fits(h.len)) {
          this.counts.oversizeMessages++;
          this.reset(socket, new Error(`vsock: the device sent a SEQPACKET message above the ${MAX_MESSAGE}-byte limit`));
          return;
        }
        if (!socket.credit.received(h.len)) {
          this.reset(socket, new Error('vsock: the device sent more than the credit given'));
          return;
        }
        socket.deliver(bytes.slice(HEADER_BYTES, HEADER_BYTES + h.len), h.flags);
        break;
      case Op.SHUTDOWN:
        if ((h.flags & Shutdown.SEND) !== 0) socket.push(null);
        break;
      case Op.CREDIT_REQUEST:
        this.packet(socket, Op.CREDIT_UPDATE);
        break;
    }
    const wake = socket.waiter;
    if (wake !== undefined && socket.credit.peerFree > 0) {
      socket.waiter = undefined;
      wake();
    }
  }

  /** Forget `socket` and fail it; tell the device with RST unless the device's RST ended it. */
  /**
   * A connection still being made fails its connect() with `err` and is dropped without an
   * 'error' event (nobody holds it yet to listen); an open one is destroyed, with `err` when
   * `destroyWithError` (a transport reset) and quietly otherwise (close).
   */
  private fail(socket: GuestConnection, err: Error, destroyWithError: boolean): void {
    const connecting = socket.connected;
    if (connecting !== undefined) {
      socket.connected = undefined;
      connecting(err);
      socket.destroy();
    } else socket.destroy(destroyWithError ? err : undefined);
  }

  private reset(socket: GuestConnection, err: Error, sendRst = true): void {
    this.sockets.delete(socket.key);
    if (sendRst) this.packet(socket, Op.RST);
    if (socket.connected !== undefined) socket.connected(err);
    else socket.destroy(err);
    // A write waiting for credit finds the socket destroyed.
    const wake = socket.waiter;
    socket.waiter = undefined;
    wake?.();
  }

  /**
   * Answer a packet that has no connection, in the packet's own type (a peer matches answers by
   * type). The device may send such packets as fast as rx buffers are posted, so answers still
   * on the tx queue are bounded: past MAX_REPLIES they are dropped and counted, as the device
   * bounds its own answers to the guest.
   */
  private reply(to: PacketHeader, op: number): void {
    if (this.repliesInFlight >= MAX_REPLIES) {
      this.counts.droppedReplies++;
      return;
    }
    this.repliesInFlight++;
    const endpoint: Endpoint = { localPort: to.dstPort, remotePort: to.srcPort, type: to.type, credit: new Credit(0) };
    void this.transmit(endpoint, op, 0, new Uint8Array(0)).then(
      () => this.repliesInFlight--,
      () => this.repliesInFlight--,
    );
  }

  private accept(h: PacketHeader): void {
    const onConnection = this.listeners.get(h.type)?.get(h.dstPort);
    if (onConnection === undefined) {
      this.reply(h, Op.RST);
      return;
    }
    const socket = h.type === SocketType.SEQPACKET ? new GuestSeqpacket(this, h.dstPort, h.srcPort, this.bufAlloc) : new GuestSocket(this, h.dstPort, h.srcPort, this.bufAlloc);
    socket.credit.peerUpdate(h.bufAlloc, h.fwdCnt);
    this.sockets.set(socket.key, socket);
    this.packet(socket, Op.RESPONSE);
    onConnection(socket);
  }

  /** §5.10.6.3: every connection is gone and the CID may have changed. */
  private transportReset(): void {
    this.transportResets++;
    for (const s of [...this.sockets.values()]) {
      this.sockets.delete(s.key);
      this.fail(s, new Error('vsock: the transport was reset'), true);
    }
    void this.core.readConfig(0, VSOCK_CONFIG.size).then((c) => (this.guestCid = VSOCK_CONFIG.get(c, 'guest_cid')), () => {});
  }
}
