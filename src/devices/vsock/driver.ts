/**
 * The guest driver of the socket device (§5.10): stream connections to the host as Node
 * Duplex streams, opened with connect() or accepted from listen(). Both ways are bounded by
 * credit (credit.ts): a write waits until the host has room for it, and the host may send only
 * as much as the stream's reader has taken, so a slow reader throttles the sender.
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
  EVENT_BYTES, EVENTQ, HEADER_BYTES, HOST_CID, Op, type PacketHeader, RXQ, Shutdown, SocketType, TXQ, VSOCK_CONFIG, VsockFeature,
  decodeHeader, encodeHeader,
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

class GuestSocket extends Duplex {
  readonly credit: Credit;
  /** A write waiting for credit. */
  waiter: (() => void) | undefined;
  connected: ((err?: Error) => void) | undefined;
  private rxCnt = 0;

  constructor(
    private readonly driver: VsockDriver,
    readonly localPort: number,
    readonly remotePort: number,
    bufAlloc: number,
  ) {
    super({ allowHalfOpen: true });
    this.credit = new Credit(bufAlloc);
  }

  get key(): string {
    return `${this.localPort}:${this.remotePort}`;
  }

  /** Host data: buffered until read; counted as forwarded only when the reader took it. */
  deliver(bytes: Uint8Array): void {
    this.rxCnt += bytes.length;
    this.push(Buffer.from(bytes));
  }

  override _read(): void {
    // Data comes when the host sends it; consumption is counted in read().
  }

  /** Every consumer (read(), 'data', pipe, async iteration) takes bytes through here. */
  override read(size?: number): Buffer | null {
    const chunk = super.read(size) as Buffer | null;
    const taken = this.rxCnt - this.readableLength;
    if (taken > 0) {
      this.credit.forwarded(taken);
      this.rxCnt -= taken;
    }
    if (this.credit.updateDue && !this.destroyed) this.driver.packet(this, Op.CREDIT_UPDATE);
    return chunk;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    void this.driver.sendData(this, new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length)).then(() => done(), done);
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

export class VsockDriver {
  /** The guest's CID, from the configuration space. */
  guestCid: number;
  private readonly sockets = new Map<string, GuestSocket>();
  private readonly listeners = new Map<number, (socket: Duplex) => void>();
  private nextPort = FIRST_EPHEMERAL_PORT;
  private readonly receivers: EventReceiver[];
  /** The device reset every connection (TRANSPORT_RESET events seen). */
  transportResets = 0;

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
      features: FRAMEWORK_FEATURES | featureBit(VsockFeature.STREAM),
      queues: 3,
      queueSize: options.queueSize,
      log: options.log,
    });
    const cid = VSOCK_CONFIG.get(await core.readConfig(0, VSOCK_CONFIG.size), 'guest_cid');
    return new VsockDriver(core, cid, options.bufAlloc ?? 256 * 1024);
  }

  /** A stream connection to host port `port`; rejects when the host refuses (RST). */
  connect(port: number): Promise<Duplex> {
    const socket = new GuestSocket(this, this.allocatePort(), port, this.bufAlloc);
    this.sockets.set(socket.key, socket);
    return new Promise((resolve, reject) => {
      socket.connected = (err) => {
        if (err === undefined) resolve(socket);
        else reject(err);
      };
      this.packet(socket, Op.REQUEST);
    });
  }

  /** Accept host connections to guest port `port`. */
  listen(port: number, onConnection: (socket: Duplex) => void): void {
    this.listeners.set(port, onConnection);
  }

  async close(): Promise<void> {
    for (const s of this.sockets.values()) s.destroy();
    await this.core.close();
    await Promise.all(this.receivers.map((r) => r.stopped));
  }

  // ---- used by GuestSocket ---------------------------------------------------------------------

  /** Send `bytes` as RW packets, each within the host's credit; resolves once all are on the ring. */
  async sendData(socket: GuestSocket, bytes: Uint8Array): Promise<void> {
    for (let at = 0; at < bytes.length; ) {
      if (socket.destroyed) throw new Error('vsock: the connection was reset');
      const free = socket.credit.peerFree;
      if (free === 0) {
        await new Promise<void>((resolve) => (socket.waiter = resolve));
        continue;
      }
      const n = Math.min(free, TX_CHUNK, bytes.length - at);
      socket.credit.sent(n);
      await this.transmit(socket, Op.RW, 0, bytes.subarray(at, at + n));
      at += n;
    }
  }

  /** A control packet; a failure to send means the device is gone, which fails every socket anyway. */
  packet(socket: GuestSocket, op: number, flags = 0): void {
    void this.transmit(socket, op, flags, new Uint8Array(0)).catch(() => {});
  }

  closed(socket: GuestSocket): void {
    if (this.sockets.get(socket.key) !== socket) return;
    this.sockets.delete(socket.key);
    // §5.10.6.4: closing both directions; the device answers with RST, which finds no socket.
    this.packet(socket, Op.SHUTDOWN, Shutdown.RCV | Shutdown.SEND);
  }

  private async transmit(socket: GuestSocket, op: number, flags: number, payload: Uint8Array): Promise<void> {
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(HEADER_BYTES + payload.length, 8);
    if (addr === undefined) throw new Error(`vsock: DMA memory exhausted allocating a ${payload.length}-byte packet`);
    try {
      const header: PacketHeader = {
        srcCid: this.guestCid, dstCid: HOST_CID, srcPort: socket.localPort, dstPort: socket.remotePort, len: payload.length,
        type: SocketType.STREAM, op, flags, bufAlloc: socket.credit.bufAlloc, fwdCnt: socket.credit.reported(),
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
    if (h === undefined || h.srcCid !== HOST_CID || h.dstCid !== this.guestCid || h.len > bytes.length - HEADER_BYTES) {
      this.core.log.warn({ length: bytes.length }, 'vsock: a malformed packet from the device');
      return;
    }
    const socket = this.sockets.get(`${h.dstPort}:${h.srcPort}`);
    if (socket === undefined) {
      if (h.op === Op.REQUEST) this.accept(h);
      return;
    }
    socket.credit.peerUpdate(h.bufAlloc, h.fwdCnt);
    switch (h.op) {
      case Op.RESPONSE:
        socket.connected?.();
        socket.connected = undefined;
        break;
      case Op.RST:
        this.sockets.delete(socket.key);
        if (socket.connected !== undefined) socket.connected(new Error(`vsock: host port ${socket.remotePort} refused the connection`));
        else socket.destroy(new Error('vsock: the host reset the connection'));
        break;
      case Op.RW:
        if (!socket.credit.received(h.len)) {
          socket.destroy(new Error('vsock: the device sent more than the credit given'));
          return;
        }
        socket.deliver(bytes.slice(HEADER_BYTES, HEADER_BYTES + h.len));
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

  private accept(h: PacketHeader): void {
    const onConnection = this.listeners.get(h.dstPort);
    const socket = new GuestSocket(this, h.dstPort, h.srcPort, this.bufAlloc);
    if (onConnection === undefined) {
      this.packet(socket, Op.RST);
      return;
    }
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
      s.destroy(new Error('vsock: the transport was reset'));
    }
    void this.core.readConfig(0, VSOCK_CONFIG.size).then((c) => (this.guestCid = VSOCK_CONFIG.get(c, 'guest_cid')), () => {});
  }
}
