/**
 * A point-to-point Ethernet tunnel over UDP: one frame per datagram, preceded by its
 * virtio_net_hdr so offload metadata crosses too. Patched to a switch port on each side, it
 * links the switches of two processes (or hosts) into one segment.
 *
 * Only datagrams from the configured peer are accepted; anything shorter than a header and an
 * Ethernet header is dropped and counted. A frame too large for one datagram is dropped and
 * counted on send (UDP carries at most 65507 bytes over IPv4).
 */
import { type Socket, createSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { type FrameHandler, type NetPort, PortCounters } from './port.ts';
import { ETH_HLEN, NET_HDR_SIZE, type Offload, decodeOffload, encodeNetHeader } from './wire.ts';

/** Largest UDP payload over IPv4: 65535 - 20 (IP) - 8 (UDP). */
const MAX_DATAGRAM = 65507;

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

export interface TunnelOptions {
  /** Where to listen (default 127.0.0.1, a free port). */
  readonly local?: Partial<Endpoint>;
  /** The other end; may be set later with setPeer (e.g. once it has bound its port). */
  readonly peer?: Endpoint;
  readonly name?: string;
}

export class UdpTunnel implements NetPort {
  readonly counters = new PortCounters();
  private handler: FrameHandler | undefined;
  private peer: Endpoint | undefined;
  private closed = false;

  private constructor(
    private readonly socket: Socket,
    readonly name: string,
    peer: Endpoint | undefined,
  ) {
    this.peer = peer;
    socket.on('message', (msg, rinfo) => this.arrived(msg, rinfo.address, rinfo.port));
    // A send or receive error (e.g. ICMP port unreachable) loses a datagram, as UDP may anyway.
    socket.on('error', () => this.counters.drops++);
  }

  /** Bind a tunnel end. Rejects with one sentence naming the address when it cannot. */
  static async open(options: TunnelOptions = {}): Promise<UdpTunnel> {
    const address = options.local?.address ?? '127.0.0.1';
    const socket = createSocket(isIPv6(address) ? 'udp6' : 'udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', (err) => reject(new Error(`UDP tunnel cannot bind ${address}:${options.local?.port ?? 0}: ${err.message}`)));
      socket.bind(options.local?.port ?? 0, address, () => resolve());
    });
    socket.removeAllListeners('error');
    if (options.peer !== undefined) checkEndpoint(options.peer);
    return new UdpTunnel(socket, options.name ?? 'tunnel', options.peer);
  }

  /** The local address and port (the port the peer should send to). */
  get local(): Endpoint {
    const a = this.socket.address();
    return { address: a.address, port: a.port };
  }

  setPeer(peer: Endpoint): void {
    checkEndpoint(peer);
    this.peer = peer;
  }

  send(frame: Uint8Array, meta: Offload): void {
    const peer = this.peer;
    if (this.closed || peer === undefined || NET_HDR_SIZE + frame.length > MAX_DATAGRAM) {
      this.counters.drops++;
      return;
    }
    this.counters.countTx(frame.length);
    // The datagram may leave after this call returns, and the frame is only lent (port.ts).
    this.socket.send([encodeNetHeader(meta, 0), frame.slice()], peer.port, peer.address);
  }

  onReceive(handler: FrameHandler | undefined): void {
    this.handler = handler;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.close();
  }

  private arrived(msg: Uint8Array, address: string, port: number): void {
    const peer = this.peer;
    const fromPeer = peer !== undefined && peer.port === port && peer.address === address;
    if (!fromPeer || msg.length < NET_HDR_SIZE + ETH_HLEN || this.handler === undefined) {
      this.counters.drops++;
      return;
    }
    const frame = new Uint8Array(msg.buffer, msg.byteOffset + NET_HDR_SIZE, msg.length - NET_HDR_SIZE);
    this.counters.countRx(frame.length);
    this.handler(frame, decodeOffload(msg));
  }
}

function checkEndpoint(e: Endpoint): void {
  if (!Number.isInteger(e.port) || e.port < 1 || e.port > 0xffff) {
    throw new RangeError(`UDP tunnel peer port ${e.port} is not an integer from 1 to 65535`);
  }
}
