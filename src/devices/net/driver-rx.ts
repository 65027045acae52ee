/**
 * The driver's receive path (§5.1.6.4): buffers kept posted on each pair's receiveq
 * (EventReceiver), frames reassembled from the buffers the device returns, and a bounded inbox
 * the consumer reads from.
 *
 * The rings stay full whatever the consumer does: frames it does not take are held in the inbox
 * and dropped (and counted) beyond it, never left in the ring. The device is not trusted: a
 * header shorter than virtio_net_hdr, a num_buffers that cannot be right, or a frame shorter
 * than an Ethernet header drops the frame as malformed.
 */
import type { VirtioDriver } from '../../virtio/driver-core.ts';
import { EventReceiver } from '../../virtio/event-receiver.ts';
import type { NetDriverCounters } from './counters.ts';
import { ETH_HLEN, NET_HDR_SIZE, type Offload, decodeNumBuffers, decodeOffload } from './wire.ts';

export interface ReceivedFrame {
  readonly frame: Uint8Array;
  readonly meta: Offload;
  /** The queue pair (0-based) it arrived on. */
  readonly pair: number;
}

/** A frame being reassembled from several merged receive buffers. */
interface Assembly {
  readonly meta: Offload;
  readonly parts: Uint8Array[];
  bytes: number;
  left: number;
}

/** Frames from one receiveq, put back together from its used buffers. */
class FrameAssembler {
  private current: Assembly | undefined;

  constructor(
    /** MRG_RXBUF negotiated: a frame may span several receive buffers (§5.1.6.4). */
    private readonly mergeable: boolean,
    /** No frame spans more buffers than the ring holds. */
    private readonly queueSize: number,
    private readonly counters: NetDriverCounters,
    private readonly deliver: (frame: Uint8Array, meta: Offload) => void,
  ) {}

  /** One used receive buffer (a view valid only during the call). */
  received(buf: Uint8Array): void {
    const a = this.current;
    if (a !== undefined) {
      a.parts.push(buf.slice());
      a.bytes += buf.length;
      if (--a.left === 0) {
        this.current = undefined;
        const frame = new Uint8Array(a.bytes);
        let at = 0;
        for (const p of a.parts) {
          frame.set(p, at);
          at += p.length;
        }
        this.complete(frame, a.meta);
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
    if (count < 1 || count > this.queueSize) {
      this.counters.rxMalformed++;
      return;
    }
    const part = buf.slice(NET_HDR_SIZE);
    if (count === 1) this.complete(part, meta);
    else this.current = { meta, parts: [part], bytes: part.length, left: count - 1 };
  }

  private complete(frame: Uint8Array, meta: Offload): void {
    if (frame.length < ETH_HLEN) {
      this.counters.rxMalformed++;
      return;
    }
    this.counters.rxPackets++;
    this.counters.rxBytes += frame.length;
    this.deliver(frame, meta);
  }
}

export class NetReceiver {
  /** Pairs whose receiveq has buffers posted. */
  private posted = 0;
  private readonly inbox: ReceivedFrame[] = [];
  private readonly readers: ((f: ReceivedFrame | undefined) => void)[] = [];
  private closed = false;

  constructor(
    private readonly core: VirtioDriver,
    private readonly mergeable: boolean,
    /** Bytes per receive buffer, header included. */
    private readonly bufferSize: number,
    /** Frames kept for next(); more are dropped and counted. */
    private readonly inboxLimit: number,
    private readonly counters: NetDriverCounters,
  ) {}

  /** Frames received and not yet taken. */
  get pending(): number {
    return this.inbox.length;
  }

  /** Post receive buffers on every pair below `pairs` that has none yet; they stay posted until the device is reset. */
  post(pairs: number): void {
    for (; this.posted < pairs; this.posted++) {
      const pair = this.posted;
      const queue = this.core.queue(2 * pair);
      const assembler = new FrameAssembler(this.mergeable, queue.size, this.counters, (frame, meta) => this.deliver({ frame, meta, pair }));
      const { memory, dma } = this.core.transport;
      new EventReceiver(queue, memory, dma, { bufferSize: this.bufferSize, onBuffer: (b) => assembler.received(b), log: this.core.log });
    }
  }

  /** The next received frame; undefined once closed. */
  next(): Promise<ReceivedFrame | undefined> {
    const f = this.inbox.shift();
    if (f !== undefined || this.closed) return Promise.resolve(f);
    return new Promise((resolve) => this.readers.push(resolve));
  }

  /** The driver closed: readers waiting get undefined. */
  close(): void {
    this.closed = true;
    for (const read of this.readers.splice(0)) read(undefined);
  }

  private deliver(f: ReceivedFrame): void {
    const read = this.readers.shift();
    if (read !== undefined) read(f);
    else if (this.inbox.length < this.inboxLimit) this.inbox.push(f);
    else this.counters.rxInboxFull++;
  }
}
