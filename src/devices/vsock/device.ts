/**
 * The socket device (§5.10): the guest's vsock connections to the host (CID 2), each joined to a
 * byte stream on the host (a Unix socket, see hybrid.ts). The guest sends packets on the tx
 * queue, served as requests; packets to the guest go into the rx buffers it posts, through an
 * event queue; the event queue carries TRANSPORT_RESET.
 *
 * Nothing is lost and memory stays bounded, both ways, by credit (§5.10.6.3, credit.ts):
 * - guest to host: we advertise a receive buffer per connection and count bytes as forwarded
 *   only once the host socket took them, so a slow host reader stops the guest's sender;
 * - host to guest: a host socket is read only while the guest has credit for it and the rx
 *   backlog has room, so a guest that reads slowly stops the host's sender.
 * A packet that breaks a rule (wrong CIDs, an unknown op or type, a length that is not the
 * payload's, more data than the credit given) resets its connection (RST); a tx buffer too
 * short for a header is counted and returned.
 *
 * SEQPACKET connections (VIRTIO_VSOCK_F_SEQPACKET, §5.10.6.6) are offered when the host can make
 * message-keeping host ends (VsockHost.connectSeqpacket). They follow the same credit rules; a
 * message is the payload of RW packets up to the one flagged VIRTIO_VSOCK_SEQ_EOM:
 * - guest to host: parts are held until EOM, then written to the host end as one message (its
 *   bytes count as forwarded once the host end took it). A message above MAX_MESSAGE resets the
 *   connection; the advertised receive buffer is MAX_MESSAGE, so a Linux guest gets EMSGSIZE
 *   for such a message before sending anything. SEQ_EOR goes with the message to the host end.
 *   An empty message is dropped and counted: a Unix reader takes it for end of file, and credit
 *   (which counts bytes) would not bound a flood of them.
 * - host to guest: each host message is sent as RW packets within the guest's credit, EOM on the
 *   last (and on the last fragment only, when an rx buffer splits a packet). A message that
 *   could never fit the guest's receive buffer resets the connection.
 * A SEQPACKET packet when the feature was not negotiated, or a packet whose type is not its
 * connection's, is answered with RST as Linux answers it (the RST carries the packet's type).
 */
import type { Duplex } from 'node:stream';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE, featureBit } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { type EventLayout, EventQueue, ONE_PER_BUFFER } from '../../virtio/event-queue.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import { Credit } from './credit.ts';
import {
  EVENT_BYTES, EVENT_TRANSPORT_RESET, EVENTQ, HEADER_BYTES, HOST_CID, MAX_GUEST_CID, MIN_GUEST_CID, Op, type PacketHeader, RXQ,
  MAX_MESSAGE, MessageParts, OversizeMessage, Seq, type SeqpacketMessage, Shutdown, SocketType, TXQ, VSOCK_CONFIG, VsockFeature, decodeHeader, encodeHeader,
} from './wire.ts';

/** Where guest connections go on the host. */
export interface VsockHost {
  /** A stream to whatever listens on host port `port`; rejects when nothing does. */
  connect(port: number): Promise<Duplex>;
  /**
   * For SEQPACKET connections: an object-mode stream whose chunks are whole messages, read as
   * Uint8Array and written as SeqpacketMessage (see seqpacket-stream.ts). Without it the device
   * does not offer VIRTIO_VSOCK_F_SEQPACKET.
   */
  connectSeqpacket?(port: number): Promise<Duplex>;
}

export interface VsockDeviceOptions {
  readonly guestCid: number;
  readonly host: VsockHost;
  readonly maxQueueSize?: number;
  /** Receive buffer advertised per connection (default 256 KiB). */
  readonly bufAlloc?: number;
}

/** Largest payload of one tx packet the device accepts (Linux sends at most 64 KiB). */
const MAX_PAYLOAD = 64 * 1024;
/** Packets waiting for rx buffers before host sockets stop being read. */
const RX_BACKLOG = 256;
/** First local port of host-initiated connections (as Firecracker numbers them). */
const FIRST_LOCAL_PORT = 1 << 30;

/** A packet for the guest; its len, buf_alloc and fwd_cnt are filled as it is written. */
interface RxPacket {
  readonly conn: Connection | undefined;
  readonly header: Omit<PacketHeader, 'len' | 'bufAlloc' | 'fwdCnt'>;
  readonly payload: Uint8Array;
}

type State = 'connecting' | 'connected' | 'closing';

class Connection {
  state: State;
  readonly credit: Credit;
  /** Host bytes read but not yet within the guest's credit; for SEQPACKET, one message each. */
  held: Uint8Array[] = [];
  /** SEQPACKET: the guest's message so far, waiting for EOM. */
  readonly message = new MessageParts();
  /**
   * How the host side ended, told to the guest as SHUTDOWN flags once `held` went out
   * (§5.10.6.4): SEND when the host program finished sending (EOF), RCV | SEND when its socket
   * closed (it reads nothing more either).
   */
  hostShutdown = 0;
  /** SHUTDOWN flags already sent to the guest. */
  shutdownSent = 0;
  /** A CREDIT_UPDATE for this connection waits for an rx buffer: another would say nothing new. */
  creditUpdateQueued = false;

  constructor(
    readonly guestPort: number,
    readonly hostPort: number,
    readonly socket: Duplex,
    /** SocketType.STREAM or SEQPACKET. */
    readonly type: number,
    state: State,
    bufAlloc: number,
  ) {
    this.state = state;
    // A SEQPACKET receive buffer is one message at most (see MAX_MESSAGE).
    this.credit = new Credit(type === SocketType.SEQPACKET ? Math.min(bufAlloc, MAX_MESSAGE) : bufAlloc);
  }

  get seqpacket(): boolean {
    return this.type === SocketType.SEQPACKET;
  }

  get key(): string {
    return `${this.guestPort}:${this.hostPort}`;
  }
}

export class VsockDevice implements VirtioDevice {
  readonly deviceId = DeviceId.VSOCK;
  readonly name = 'vsock';
  /** §5.10.2: rx, tx, event. */
  readonly numQueues = 3;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly config = new Uint8Array(VSOCK_CONFIG.size);
  readonly counters: DeviceCounters;
  private readonly guestCid: number;
  private readonly bufAlloc: number;
  private readonly host: VsockHost;
  private ctx: DeviceContext | undefined;
  private rx: EventQueue<RxPacket> | undefined;
  private events: EventQueue<Uint8Array> | undefined;
  private tx: QueueServer | undefined;
  /** Packets refused by a full rx backlog, sent first when it has room. */
  private pending: RxPacket[] = [];
  private readonly conns = new Map<string, Connection>();
  /** Host-initiated connections waiting for the guest's RESPONSE or RST. */
  private readonly connecting = new Map<string, (err?: Error) => void>();
  private nextLocalPort = FIRST_LOCAL_PORT;
  private activations = 0;
  private readonly counts = { badPackets: 0, resets: 0, creditViolations: 0, refusedConnections: 0, connections: 0, creditExhausted: 0, droppedReplies: 0, oversizeMessages: 0, emptyMessages: 0 };
  /**
   * Bytes the back-end holds, now and at most so far: guest bytes handed to host sockets and not
   * yet taken by them (bounded by the credit we give, bufAlloc per connection), and host bytes
   * read and not yet in rx buffers (bounded by the guest's credit and the rx backlog).
   */
  private readonly buffered = { toHost: 0, toHostPeak: 0, toGuest: 0, toGuestPeak: 0 };

  constructor(options: VsockDeviceOptions) {
    const { guestCid } = options;
    if (!Number.isSafeInteger(guestCid) || guestCid < MIN_GUEST_CID || guestCid > MAX_GUEST_CID) {
      throw new RangeError(`guest CID ${guestCid} must be an integer from ${MIN_GUEST_CID} to ${MAX_GUEST_CID}`);
    }
    this.guestCid = guestCid;
    this.host = options.host;
    this.features = FRAMEWORK_FEATURES | featureBit(VsockFeature.STREAM) | (options.host.connectSeqpacket !== undefined ? featureBit(VsockFeature.SEQPACKET) : 0n);
    this.maxQueueSize = options.maxQueueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    this.bufAlloc = options.bufAlloc ?? 256 * 1024;
    VSOCK_CONFIG.encode({ guest_cid: guestCid }, this.config);
    this.counters = new DeviceCounters(3, () => ({
      ...this.counts,
      open: this.conns.size,
      bufferedToHost: this.buffered.toHost,
      bufferedToHostPeak: this.buffered.toHostPeak,
      bufferedToGuest: this.buffered.toGuest,
      bufferedToGuestPeak: this.buffered.toGuestPeak,
    }));
  }

  /** Open connections. */
  get connections(): number {
    return this.conns.size;
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.rx = new EventQueue(ctx, RXQ, {
      layout: this.rxLayout,
      backlog: RX_BACKLOG,
      overflow: 'refuse',
      minBuffer: { bytes: HEADER_BYTES, rule: '§5.10.6.2: an rx buffer holds at least a packet header' },
      onSpace: () => this.flush(),
    });
    this.events = new EventQueue(ctx, EVENTQ, { layout: ONE_PER_BUFFER, backlog: 4, overflow: 'drop', minBuffer: { bytes: EVENT_BYTES, rule: '§5.10.6.3: an event buffer holds a virtio_vsock_event' } });
    this.tx = new QueueServer(ctx, TXQ, (req) => this.transmit(req));
    // §5.10.6.3: a driver that reconnects to a device that had connections learns they are gone.
    if (this.activations++ > 0) {
      const event = new Uint8Array(EVENT_BYTES);
      new DataView(event.buffer).setUint32(0, EVENT_TRANSPORT_RESET, true);
      this.events.offer(event);
    }
  }

  queueNotify(index: number): void {
    if (index === RXQ) this.rx?.kick();
    else if (index === TXQ) this.tx?.kick();
    else if (index === EVENTQ) this.events?.kick();
  }

  reset(): void {
    this.ctx = undefined;
    this.rx = undefined;
    this.tx = undefined;
    this.events = undefined;
    this.pending = [];
    for (const c of this.conns.values()) c.socket.destroy();
    this.conns.clear();
    // Held host bytes and the rx backlog went with the queues and connections.
    this.buffered.toGuest = 0;
  }

  /**
   * A host program asks for a connection to guest port `port` (hybrid vsock's "CONNECT P"):
   * `settled` is called with the local port the moment the guest accepts (before any of its
   * data reaches `socket`), or with an error when it refuses or no driver runs.
   */
  connectToGuest(port: number, socket: Duplex, settled: (result: number | Error) => void, type: number = SocketType.STREAM): void {
    if (this.ctx === undefined) {
      settled(new Error('no guest driver is running'));
      return;
    }
    if (type === SocketType.SEQPACKET && !this.seqpacketNegotiated) {
      settled(new Error('the guest driver did not accept SEQPACKET sockets'));
      return;
    }
    const localPort = this.allocatePort();
    const conn = new Connection(port, localPort, socket, type, 'connecting', this.bufAlloc);
    this.conns.set(conn.key, conn);
    this.connecting.set(conn.key, (err) => settled(err ?? localPort));
    this.send(conn, Op.REQUEST);
  }

  private get seqpacketNegotiated(): boolean {
    return this.ctx !== undefined && (this.ctx.features & featureBit(VsockFeature.SEQPACKET)) !== 0n;
  }

  private allocatePort(): number {
    for (;;) {
      const port = this.nextLocalPort;
      this.nextLocalPort = this.nextLocalPort >= 0xffff_fffe ? FIRST_LOCAL_PORT : this.nextLocalPort + 1;
      if (![...this.conns.values()].some((c) => c.hostPort === port)) return port;
    }
  }

  // ---- guest to host ---------------------------------------------------------------------------

  private transmit(req: Request): void {
    const header = decodeHeader(req.reader.readExact(HEADER_BYTES) ?? new Uint8Array(0));
    if (header === undefined) {
      this.counts.badPackets++;
      return;
    }
    // Packets not from this guest to the host are not ours to answer (§5.10.6.1).
    if (header.srcCid !== this.guestCid || header.dstCid !== HOST_CID) {
      this.counts.badPackets++;
      return;
    }
    const key = `${header.srcPort}:${header.dstPort}`;
    const conn = this.conns.get(key);
    // §5.10.6.6: SEQPACKET only once negotiated; a packet's type must be its connection's.
    const typeKnown = header.type === SocketType.STREAM || (header.type === SocketType.SEQPACKET && this.seqpacketNegotiated);
    const typeFits = conn === undefined || conn.type === header.type;
    if (header.len > MAX_PAYLOAD || header.len !== req.reader.remaining || !typeKnown || !typeFits || header.op === Op.INVALID || header.op > Op.CREDIT_REQUEST) {
      this.counts.badPackets++;
      if (header.op !== Op.RST) this.reply(header, Op.RST);
      if (conn !== undefined) this.drop(conn);
      return;
    }
    if (conn !== undefined) conn.credit.peerUpdate(header.bufAlloc, header.fwdCnt);
    switch (header.op) {
      case Op.REQUEST:
        if (conn !== undefined) {
          this.reply(header, Op.RST);
          this.drop(conn);
          return;
        }
        this.guestConnect(header);
        return;
      case Op.RST:
        if (conn !== undefined) this.drop(conn, new Error('the guest refused the connection'));
        return;
    }
    if (conn === undefined) {
      // §5.10.6.4: a packet for no connection is answered with RST.
      this.reply(header, Op.RST);
      return;
    }
    switch (header.op) {
      case Op.RESPONSE:
        if (conn.state !== 'connecting') {
          this.reset1(conn);
          return;
        }
        conn.state = 'connected';
        this.counts.connections++;
        this.connecting.get(conn.key)?.();
        this.connecting.delete(conn.key);
        this.startReading(conn);
        return;
      case Op.RW: {
        const payload = req.reader.readExact(header.len) ?? new Uint8Array(0);
        // Checked before credit, which such a message breaks too, to name the reason.
        if (conn.seqpacket && conn.message.bytes + payload.length > MAX_MESSAGE) {
          this.counts.oversizeMessages++;
          this.reset1(conn);
          return;
        }
        if (conn.state !== 'connected' || !conn.credit.received(payload.length)) {
          if (conn.state === 'connected') this.counts.creditViolations++;
          this.reset1(conn);
          return;
        }
        if (conn.seqpacket) this.messagePart(conn, payload, header.flags);
        else this.toHost(conn, payload, payload.length);
        this.pump(conn);
        return;
      }
      case Op.SHUTDOWN:
        if ((header.flags & Shutdown.SEND) !== 0) conn.socket.end();
        if ((header.flags & (Shutdown.SEND | Shutdown.RCV)) === (Shutdown.SEND | Shutdown.RCV)) {
          // §5.10.6.4: the guest closed; RST ends the connection. What it sent is still being
          // written to the host socket, which closes once that is done.
          this.send(conn, Op.RST);
          this.conns.delete(conn.key);
          // An earlier SHUTDOWN(SEND) may have finished the host socket already (a Linux guest's
          // shutdown(SHUT_WR) then close()): 'finish' would not come again.
          if (conn.socket.writableFinished) conn.socket.destroy();
          else {
            conn.socket.once('finish', () => conn.socket.destroy());
            conn.socket.end();
          }
        }
        return;
      case Op.CREDIT_REQUEST:
        this.creditUpdate(conn);
        return;
      case Op.CREDIT_UPDATE:
        this.pump(conn);
        return;
    }
  }

  /** A guest REQUEST for host port dst_port: connect to the host listener, answer RESPONSE or RST. */
  private guestConnect(header: PacketHeader): void {
    const ctx = this.ctx;
    // A SEQPACKET packet got here only if the feature, offered only with connectSeqpacket, was negotiated.
    const pendingSocket =
      header.type === SocketType.SEQPACKET
        ? (this.host.connectSeqpacket?.(header.dstPort) ?? Promise.reject(new Error('no SEQPACKET host ends')))
        : this.host.connect(header.dstPort);
    void pendingSocket.then(
      (socket) => {
        if (this.ctx !== ctx || ctx === undefined) {
          socket.destroy();
          return;
        }
        const conn = new Connection(header.srcPort, header.dstPort, socket, header.type, 'connected', this.bufAlloc);
        conn.credit.peerUpdate(header.bufAlloc, header.fwdCnt);
        this.conns.set(conn.key, conn);
        this.counts.connections++;
        this.send(conn, Op.RESPONSE);
        this.startReading(conn);
      },
      () => {
        if (this.ctx !== ctx) return;
        this.counts.refusedConnections++;
        this.reply(header, Op.RST);
      },
    );
  }

  /**
   * A part of the guest's SEQPACKET message (§5.10.6.6): held until the part flagged EOM, then
   * handed on as one message. Held parts count as buffered for the host: they are credit given.
   */
  private messagePart(conn: Connection, payload: Uint8Array, flags: number): void {
    conn.message.add(payload);
    this.holdForHost(payload.length);
    if ((flags & Seq.EOM) === 0) {
      // The rest of the message may need credit that earlier messages freed and the guest has
      // not heard of yet (a stream's bytes are forwarded, which reports it; these wait for EOM).
      if (conn.credit.updateDue) this.creditUpdate(conn);
      return;
    }
    const bytes = conn.message.take();
    this.buffered.toHost -= bytes.length;
    if (bytes.length === 0) {
      // A host program reads an empty Unix message as end of file, and credit, which bounds what
      // the back-end holds, does not count empty messages: they are dropped, and counted.
      this.counts.emptyMessages++;
      return;
    }
    const message: SeqpacketMessage = { bytes, eor: (flags & Seq.EOR) !== 0 };
    this.toHost(conn, message, bytes.length);
  }

  private holdForHost(n: number): void {
    const b = this.buffered;
    b.toHost += n;
    if (b.toHost > b.toHostPeak) b.toHostPeak = b.toHost;
  }

  /**
   * Hand guest bytes (or a SEQPACKET message of `length` bytes) to the host socket; they count
   * as forwarded once it took them.
   */
  private toHost(conn: Connection, chunk: Uint8Array | SeqpacketMessage, length: number): void {
    if (length === 0) return;
    this.holdForHost(length);
    // The guest used all the credit we gave: it waits for our CREDIT_UPDATE (a slow host reader).
    if (conn.credit.advertisedFree === 0) this.counts.creditExhausted++;
    conn.socket.write(chunk, (err) => {
      this.buffered.toHost -= length;
      if (err !== undefined && err !== null) return;
      conn.credit.forwarded(length);
      if (this.conns.get(conn.key) === conn && conn.credit.updateDue) this.creditUpdate(conn);
    });
  }

  // ---- host to guest ---------------------------------------------------------------------------

  private startReading(conn: Connection): void {
    const { socket } = conn;
    socket.on('data', (chunk: Uint8Array) => {
      // §5.10.6.6: a message is delivered once all of it is in the guest's buffer, so one larger
      // than that buffer would wait for credit forever.
      if (conn.seqpacket && chunk.length > conn.credit.peerBuffer) {
        this.counts.oversizeMessages++;
        this.reset1(conn);
        return;
      }
      const b = this.buffered;
      b.toGuest += chunk.length;
      if (b.toGuest > b.toGuestPeak) b.toGuestPeak = b.toGuest;
      conn.held.push(chunk);
      this.pump(conn);
    });
    socket.on('end', () => {
      conn.hostShutdown |= Shutdown.SEND;
      this.pump(conn);
    });
    socket.on('error', (err: Error) => {
      if (err instanceof OversizeMessage) this.counts.oversizeMessages++;
      socket.destroy();
    });
    socket.on('close', () => {
      if (this.conns.get(conn.key) !== conn) return;
      // `errored`, not close's hadError argument, which only net.Socket passes.
      if (socket.errored !== null) {
        // The host stream broke (reset, or a write failed): bytes were lost, so the guest must
        // not take what it got for the whole stream. RST is the abortive close (§5.10.6.4).
        this.reset1(conn);
        return;
      }
      // Closed in order: what the host program sent goes to the guest first, then SHUTDOWN; the
      // guest answers RST once it has read it.
      conn.hostShutdown |= Shutdown.RCV | Shutdown.SEND;
      this.pump(conn);
    });
    this.pump(conn);
  }

  /** Send held host bytes within the guest's credit; read more only when all went. */
  private pump(conn: Connection): void {
    if (conn.state !== 'connected' && conn.state !== 'closing') return;
    while (conn.held.length > 0 && conn.credit.peerFree > 0 && this.pending.length === 0) {
      const chunk = conn.held[0];
      const n = Math.min(chunk.length, conn.credit.peerFree, MAX_PAYLOAD);
      if (n < chunk.length) conn.held[0] = chunk.subarray(n);
      else conn.held.shift();
      conn.credit.sent(n);
      // A SEQPACKET message's last part carries EOM (§5.10.6.6).
      this.send(conn, Op.RW, conn.seqpacket && n === chunk.length ? Seq.EOM : 0, chunk.slice(0, n));
    }
    if (conn.held.length === 0 && this.pending.length === 0) conn.socket.resume();
    else conn.socket.pause();
    const shutdown = conn.hostShutdown & ~conn.shutdownSent;
    if (conn.held.length === 0 && shutdown !== 0 && conn.state === 'connected') {
      conn.shutdownSent |= conn.hostShutdown;
      this.send(conn, Op.SHUTDOWN, conn.shutdownSent);
      // Both ways shut: the guest's RST (or its own SHUTDOWN) ends the connection; its data now finds no reader.
      if ((conn.shutdownSent & Shutdown.RCV) !== 0) conn.state = 'closing';
    }
  }

  /** The rx backlog has room: send what waited, then let connections read again. */
  private flush(): void {
    while (this.pending.length > 0 && this.rx !== undefined) {
      if (!this.rx.offer(this.pending[0])) return;
      this.pending.shift();
    }
    for (const c of this.conns.values()) this.pump(c);
  }

  private send(conn: Connection, op: number, flags = 0, payload: Uint8Array = new Uint8Array(0)): void {
    this.enqueue({
      conn,
      header: { srcCid: HOST_CID, dstCid: this.guestCid, srcPort: conn.hostPort, dstPort: conn.guestPort, type: conn.type, op, flags },
      payload,
    });
  }

  /** Tell the guest our fwd_cnt, unless a packet already on its way will. */
  private creditUpdate(conn: Connection): void {
    if (conn.creditUpdateQueued) return;
    conn.creditUpdateQueued = true;
    this.send(conn, Op.CREDIT_UPDATE);
  }

  /**
   * Answer a packet that has no connection (RST to a closed port), in the packet's own type as
   * Linux's virtio_transport_reset_no_sock() does: a guest matches an answer to its socket by
   * type, and a SEQPACKET connect answered as a stream would wait for its timeout. Such answers are not queued
   * behind a full rx backlog: a guest sending packets while posting no rx buffers would grow it
   * without bound. Dropped ones are counted; the guest's own timeout ends its attempt.
   */
  private reply(to: PacketHeader, op: number): void {
    if (this.rx === undefined || this.pending.length > 0) {
      this.counts.droppedReplies++;
      return;
    }
    const sent = this.rx.offer({
      conn: undefined,
      header: { srcCid: HOST_CID, dstCid: this.guestCid, srcPort: to.dstPort, dstPort: to.srcPort, type: to.type, op, flags: 0 },
      payload: new Uint8Array(0),
    });
    if (!sent) this.counts.droppedReplies++;
  }

  private enqueue(p: RxPacket): void {
    if (this.rx === undefined) return;
    if (this.pending.length > 0 || !this.rx.offer(p)) this.pending.push(p);
  }

  /** RST the guest's side and forget the connection. */
  private reset1(conn: Connection): void {
    this.counts.resets++;
    this.send(conn, Op.RST);
    this.drop(conn);
  }

  private drop(conn: Connection, err?: Error): void {
    if (this.conns.get(conn.key) !== conn) return;
    this.conns.delete(conn.key);
    this.connecting.get(conn.key)?.(err ?? new Error('the connection was reset'));
    this.connecting.delete(conn.key);
    for (const chunk of conn.held) this.buffered.toGuest -= chunk.length;
    conn.held = [];
    this.buffered.toHost -= conn.message.bytes;
    conn.message.clear();
    conn.socket.destroy();
  }

  /** Packets into rx buffers: header and as much payload as the buffer holds, the rest in the next. */
  private readonly rxLayout: EventLayout<RxPacket> = {
    fit: () => 1,
    write: (p, writers) => {
      const w = writers[0];
      const room = w.remaining - HEADER_BYTES;
      const n = Math.min(p.payload.length, room);
      const rest = n < p.payload.length ? p.payload.subarray(n) : undefined;
      const credit = p.conn?.credit;
      if (p.header.op === Op.CREDIT_UPDATE && p.conn !== undefined) p.conn.creditUpdateQueued = false;
      // A packet split over rx buffers ends in its last fragment: only that one keeps EOM/EOR.
      const flags = rest === undefined || p.header.op !== Op.RW ? p.header.flags : p.header.flags & ~(Seq.EOM | Seq.EOR);
      w.write(encodeHeader({ ...p.header, flags, len: n, bufAlloc: credit?.bufAlloc ?? 0, fwdCnt: credit?.reported() ?? 0 }));
      w.write(p.payload.subarray(0, n));
      if (p.conn !== undefined) this.buffered.toGuest -= n;
      return rest === undefined ? undefined : { ...p, payload: rest };
    },
  };
}
