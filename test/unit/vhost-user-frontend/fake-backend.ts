/**
 * A scripted vhost-user back-end for testing the front-end against misbehaviour: it answers the
 * handshake like a well-behaved back-end unless a hook says otherwise, maps the memory table,
 * and serves split rings by hand so that a test can make it return whatever used element it
 * likes. One connection at a time, in-process, on a real Unix socket.
 */
import { EventFd } from '../../../src/native/eventfd.ts';
import { closeAll } from '../../../src/native/fd.ts';
import { Mapping } from '../../../src/native/mapping.ts';
import { type Watcher, watch, whenReadable } from '../../../src/native/readiness.ts';
import { UnixListener, UnixSocket } from '../../../src/native/unix-socket.ts';
import { FrontendRequest as F, VHOST_USER_F_PROTOCOL_FEATURES } from '../../../src/transports/vhost-user/constants.ts';
import { encodeAck, encodeReply, type FrontendRequestMessage, type Payload } from '../../../src/transports/vhost-user/messages.ts';
import { MessageReader } from '../../../src/transports/vhost-user/reader.ts';
import { Feature, featureBit } from '../../../src/virtio/constants.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';

/**
 * What a hook does with a request: answer it as usual, hang up, send nothing, send this reply
 * (to this request type) without acting on it, or act on it and send these bytes as they are in
 * place of the answer.
 */
export type HookResult =
  | 'default'
  | 'close'
  | 'ignore'
  | { readonly reply: Payload; readonly request?: number }
  | { readonly raw: Uint8Array };

export interface FakeBackendOptions {
  readonly features?: bigint;
  readonly protocolFeatures?: bigint;
  /** Runs first for every request. */
  readonly hook?: (m: FrontendRequestMessage) => HookResult;
  /** A kick on ring 0 arrived: 'close' hangs up, a number completes every available buffer claiming that many bytes. */
  readonly onKick?: 'close' | number;
}

interface RingState {
  size: number;
  desc: number;
  avail: number;
  used: number;
  lastAvail: number;
  call?: EventFd;
  kickWatcher?: Watcher;
  kick?: EventFd;
}

/**
 * Stop a ring and close every descriptor the front-end sent for it, as GET_VRING_BASE does
 * ("Starting and stopping rings"): a ring forgotten with its call eventfd open would leak it.
 */
function stopRing(r: RingState): void {
  r.kickWatcher?.close();
  r.kick?.close();
  r.call?.close();
}

export class FakeBackend {
  private readonly listener: UnixListener;
  private readonly listenWatcher: Watcher;
  private socket: UnixSocket | undefined;
  private watcher: Watcher | undefined;
  private reader = new MessageReader('frontend-requests');
  private memory: GuestMemory | undefined;
  private mapping: Mapping | undefined;
  /** User address minus guest address of the one region. */
  private userOffset = 0;
  private readonly rings = new Map<number, RingState>();
  /** Every request type received, in order. */
  readonly received: number[] = [];
  /** The back-end request channel the front-end handed over (SET_BACKEND_REQ_FD). */
  private channel: UnixSocket | undefined;

  constructor(
    readonly path: string,
    private readonly options: FakeBackendOptions = {},
  ) {
    this.listener = UnixListener.listen(path);
    this.listenWatcher = watch(this.listener.fd, { readable: () => this.accept() });
  }

  /** Hang up on the current front-end (if any) and release what it sent. */
  disconnect(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.socket?.close();
    this.socket = undefined;
    closeAll(this.reader.takePendingFds());
    this.reader = new MessageReader('frontend-requests');
    for (const r of this.rings.values()) stopRing(r);
    this.rings.clear();
    this.mapping?.unmap();
    this.mapping = undefined;
    this.memory = undefined;
    this.channel?.close();
    this.channel = undefined;
  }

  /**
   * Send `bytes` on the back-end request channel and resolve with what the front-end sends back
   * first: a reply, or empty bytes when it closed the channel.
   */
  async backendRequest(bytes: Uint8Array): Promise<Uint8Array> {
    const channel = this.channel;
    if (channel === undefined) throw new Error('the front-end sent no back-end request channel');
    channel.send(bytes);
    for (;;) {
      await whenReadable(channel.fd);
      const got = channel.receive();
      if (got !== null) return got.bytes;
    }
  }

  close(): void {
    this.disconnect();
    this.listenWatcher.close();
    this.listener.close();
  }

  private accept(): void {
    const s = this.listener.tryAccept();
    if (s === null) return;
    this.disconnect();
    this.socket = s;
    this.watcher = watch(s.fd, { readable: () => this.readable() });
  }

  private readable(): void {
    const s = this.socket;
    if (s === undefined) return;
    for (let got = s.receive(); got !== null; got = this.socket?.receive() ?? null) {
      if (got.bytes.length === 0) {
        this.disconnect();
        return;
      }
      this.reader.push(got.bytes, got.fds);
    }
    for (let next = this.reader.next(); next.type === 'message'; next = this.reader.next()) {
      if (!this.handle(next.message)) return;
    }
  }

  /** Returns false once the connection is gone. */
  private handle(m: FrontendRequestMessage): boolean {
    this.received.push(m.request);
    const hooked = this.options.hook?.(m) ?? 'default';
    if (hooked === 'close') {
      closeAll(m.fds);
      this.disconnect();
      return false;
    }
    if (hooked === 'ignore') {
      closeAll(m.fds);
      return true;
    }
    if (hooked !== 'default' && 'raw' in hooked) {
      // The request takes effect and only the answer is replaced: bytes that happen to be the
      // right acknowledgement then leave a back-end that really serves, not one that acked a
      // kick or call descriptor it never watches (a driver waiting on it would wait forever).
      this.answer(m);
      this.send(hooked.raw);
      return true;
    }
    if (hooked !== 'default') {
      closeAll(m.fds);
      this.send(encodeReply('frontend-replies', hooked.request ?? m.request, hooked.reply).bytes);
      return true;
    }
    const body = this.answer(m);
    if (body !== undefined) this.send(encodeReply('frontend-replies', m.request, body).bytes);
    else if (m.needReply) this.send(encodeAck('frontend-replies', m.request).bytes);
    return true;
  }

  private send(bytes: Uint8Array): void {
    if (bytes.length > 0) this.socket?.send(bytes);
  }

  private ring(index: number): RingState {
    let r = this.rings.get(index);
    if (r === undefined) this.rings.set(index, (r = { size: 0, desc: 0, avail: 0, used: 0, lastAvail: 0 }));
    return r;
  }

  private guest(user: bigint): number {
    return Number(user) - this.userOffset;
  }

  /** The usual answer to `m`, taking ownership of its descriptors. */
  private answer(m: FrontendRequestMessage): Payload | undefined {
    const u64 = (value: bigint): Payload => ({ kind: 'u64', value });
    switch (m.request) {
      case F.GET_FEATURES:
        return u64(this.options.features ?? featureBit(Feature.VERSION_1) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES));
      case F.GET_PROTOCOL_FEATURES:
        return u64(this.options.protocolFeatures ?? 0n);
      case F.GET_QUEUE_NUM:
        return u64(1n);
      case F.SET_MEM_TABLE: {
        const [r] = m.payload.regions;
        this.mapping = Mapping.shared(m.fds[0], Number(r.size), { offset: Number(r.mmapOffset) });
        this.memory = new GuestMemory([{ guestAddr: Number(r.guestAddr), bytes: this.mapping.bytes }]);
        this.userOffset = Number(r.userAddr - r.guestAddr);
        closeAll(m.fds);
        return undefined;
      }
      case F.SET_VRING_NUM:
        this.ring(m.payload.index).size = m.payload.num;
        return undefined;
      case F.SET_VRING_ADDR: {
        const r = this.ring(m.payload.index);
        r.desc = this.guest(m.payload.descUser);
        r.avail = this.guest(m.payload.availUser);
        r.used = this.guest(m.payload.usedUser);
        return undefined;
      }
      case F.SET_VRING_CALL: {
        const r = this.ring(Number(m.payload.value & 0xffn));
        r.call?.close();
        r.call = EventFd.adopt(m.fds[0]);
        return undefined;
      }
      case F.SET_VRING_KICK: {
        const index = Number(m.payload.value & 0xffn);
        const r = this.ring(index);
        r.kickWatcher?.close();
        r.kick?.close();
        const kick = EventFd.adopt(m.fds[0]);
        r.kick = kick;
        r.kickWatcher = watch(kick.fd, {
          readable: () => {
            kick.take();
            this.kicked(r);
          },
        });
        return undefined;
      }
      case F.SET_BACKEND_REQ_FD:
        this.channel?.close();
        this.channel = new UnixSocket(m.fds[0]);
        return undefined;
      case F.GET_VRING_BASE: {
        const r = this.rings.get(m.payload.index);
        if (r !== undefined) stopRing(r);
        this.rings.delete(m.payload.index);
        return { kind: 'vring-state', index: m.payload.index, num: r?.lastAvail ?? 0 };
      }
      default:
        closeAll(m.fds);
        return undefined;
    }
  }

  /** §2.7: take every new available head and return it used, claiming `onKick` bytes. */
  private kicked(r: RingState): void {
    const action = this.options.onKick;
    if (action === 'close') {
      this.disconnect();
      return;
    }
    const mem = this.memory;
    if (action === undefined || mem === undefined) return;
    const availIdx = mem.readU16(r.avail + 2);
    while (r.lastAvail !== availIdx) {
      const head = mem.readU16(r.avail + 4 + 2 * (r.lastAvail % r.size));
      const usedIdx = mem.readU16(r.used + 2);
      const elem = r.used + 4 + 8 * (usedIdx % r.size);
      mem.writeU32(elem, head);
      mem.writeU32(elem + 4, action);
      mem.writeU16(r.used + 2, (usedIdx + 1) & 0xffff);
      r.lastAvail = (r.lastAvail + 1) & 0xffff;
    }
    r.call?.signal();
  }
}
