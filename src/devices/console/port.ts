/**
 * One port of a console device (§5.3.6): its two queues and the host end it is bridged to.
 *
 * - Guest to host (transmitq): each buffer's bytes are written to the host end. When the host end
 *   is slow (its write() returns false) the port stops serving the transmitq until it drains:
 *   buffers stay in the ring, and a guest writing more blocks instead of anything being lost.
 * - Host to guest (receiveq): the host end is read only while the guest has the port open and an
 *   event queue (BYTE_STREAM, overflow 'refuse') takes its chunks; a refused chunk pauses the host
 *   end until the guest posts buffers again, so host input waits instead of being dropped, and
 *   at most `backlog` chunks wait in the device.
 * - Bytes the guest writes while no host client is connected are discarded and counted, as QEMU
 *   does for a socket chardev: Linux blocks writes to a closed port (it knows from PORT_OPEN), so
 *   only the console (hvc, which busy-waits on its buffers) and drivers ignoring PORT_OPEN write then.
 */
import { EventEmitter } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import type { DeviceContext } from '../../virtio/device.ts';
import { BYTE_STREAM, EventQueue } from '../../virtio/event-queue.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import { portReceiveQueue, portTransmitQueue } from './wire.ts';

/** A host client of a port: where guest output goes and, for two-way ends, where guest input comes from. */
export interface HostLink {
  readonly input?: Readable;
  readonly output: Writable;
}

export interface PortSpec {
  /** Port number, 0 to max_nr_ports - 1; port 0 is the console of a device without MULTIPORT. */
  readonly id: number;
  /** Name sent with PORT_NAME, seen by the guest in /sys/class/virtio-ports/vportNpM/name. */
  readonly name?: string;
  /** A console port (CONSOLE_PORT): the guest makes it an hvc terminal. */
  readonly console?: boolean;
}

/** Largest slice of a guest buffer handed to the host end in one write. */
const WRITE_SLICE = 64 * 1024;

/**
 * Events: 'guest-open' and 'guest-close' (the guest's PORT_OPEN), 'host-change' (a host client
 * came or left; the device tells the guest).
 */
export class ConsolePort extends EventEmitter {
  readonly id: number;
  readonly name: string | undefined;
  readonly console: boolean;
  /** The guest has the port open (PORT_OPEN from the driver; always for a console without MULTIPORT). */
  guestOpen = false;
  /** Guest bytes discarded because no host client was connected. */
  discardedBytes = 0;
  private link: HostLink | undefined;
  private rx: EventQueue<Uint8Array> | undefined;
  private tx: QueueServer | undefined;
  /** Served queues belong to this binding; a request finishing after unbind() touches nothing. */
  private binding = 0;
  /** A chunk of host input the receive queue refused, first to go when it has room. */
  private pending: Uint8Array | undefined;
  /** Settles when the host end drained; set while its write() says it is full. */
  private blocked: Promise<void> | undefined;
  private readonly onInput = (chunk: Buffer): void => {
    if (!this.offer(chunk)) this.link?.input?.pause();
  };

  constructor(spec: PortSpec, private readonly backlog: number) {
    super();
    this.id = spec.id;
    this.name = spec.name;
    this.console = spec.console === true;
  }

  get hostConnected(): boolean {
    return this.link !== undefined;
  }

  /** Host input waiting in the device for receive buffers (chunks). */
  get waitingChunks(): number {
    return (this.rx?.waiting ?? 0) + (this.pending === undefined ? 0 : 1);
  }

  /** A host client connected; one at a time, a second is the caller's to refuse. */
  attach(link: HostLink): void {
    if (this.link !== undefined) throw new Error(`port ${this.id} already has a host client`);
    this.link = link;
    link.input?.pause();
    link.input?.on('data', this.onInput);
    this.flow();
    this.emit('host-change', true);
  }

  /** The host client left: guest output is discarded until the next one, its input is not read. */
  detach(): void {
    const link = this.link;
    if (link === undefined) return;
    link.input?.off('data', this.onInput);
    this.link = undefined;
    this.emit('host-change', false);
  }

  /** Serve the port's queues in `ctx` (the driver is ready, or the port was added while it runs). */
  bind(ctx: DeviceContext): void {
    const binding = ++this.binding;
    const scoped = scopedContext(ctx, () => this.binding === binding);
    this.rx = new EventQueue(scoped, portReceiveQueue(this.id), {
      layout: BYTE_STREAM,
      backlog: this.backlog,
      overflow: 'refuse',
      onSpace: () => this.flow(),
    });
    this.tx = new QueueServer(scoped, portTransmitQueue(this.id), (req) => this.transmit(req));
  }

  /** Stop using the port's queues (reset, or the port was removed): nothing held is returned. */
  unbind(): void {
    this.binding++;
    this.rx = undefined;
    this.tx = undefined;
    this.setGuestOpen(false);
  }

  /** The driver notified one of the port's queues. */
  notify(receive: boolean): void {
    if (receive) this.rx?.kick();
    else this.tx?.kick();
  }

  setGuestOpen(open: boolean): void {
    if (open === this.guestOpen) return;
    this.guestOpen = open;
    if (open) this.flow();
    else this.link?.input?.pause();
    this.emit(open ? 'guest-open' : 'guest-close');
  }

  /** VIRTIO_CONSOLE_F_EMERG_WRITE: one byte for the host, written whether or not the host end keeps up. */
  emergencyWrite(byte: number): boolean {
    if (this.link === undefined) return false;
    this.link.output.write(Uint8Array.of(byte));
    return true;
  }

  /** Take host input into the receive queue; false when it has to wait (kept as `pending`). */
  private offer(chunk: Uint8Array): boolean {
    if (this.rx === undefined || !this.guestOpen || !this.rx.offer(chunk)) {
      this.pending = chunk;
      return false;
    }
    return true;
  }

  /** Move host input again: the guest opened the port, the queue has room, or a client came. */
  private flow(): void {
    if (this.rx === undefined || !this.guestOpen) return;
    const chunk = this.pending;
    this.pending = undefined;
    if (chunk !== undefined && !this.offer(chunk)) return;
    this.link?.input?.resume();
  }

  private transmit(req: Request): void | Promise<void> {
    // Back-pressure: the request (and every one popped after it) waits in the ring for a drain.
    if (this.blocked !== undefined) return this.blocked.then(() => this.transmit(req));
    const link = this.link;
    if (link === undefined) {
      this.discardedBytes += req.reader.remaining;
      return;
    }
    let full = false;
    while (req.reader.remaining > 0) {
      const segs = req.reader.segments(Math.min(req.reader.remaining, WRITE_SLICE));
      if (segs.length === 0) break; // the request died (reset): nothing more to read
      // Copy: the write completes after the buffer went back to the guest.
      for (const seg of segs) if (!link.output.write(Buffer.from(seg))) full = true;
    }
    if (full) this.blocked = drained(link.output).then(() => (this.blocked = undefined));
  }
}

/** Settles when `out` drains or closes (a closed end discards what follows, see transmit). */
export function drained(out: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      out.off('drain', done);
      out.off('close', done);
      out.off('error', done);
      resolve();
    };
    out.on('drain', done);
    out.on('close', done);
    out.on('error', done);
  });
}

/** `ctx` as seen by one binding of a port: its queues vanish when `live` turns false. */
function scopedContext(ctx: DeviceContext, live: () => boolean): DeviceContext {
  return {
    get memory() {
      return ctx.memory;
    },
    features: ctx.features,
    queue: (index) => (live() ? ctx.queue(index) : undefined),
    notifyQueue: (index) => ctx.notifyQueue(index),
    configChanged: () => ctx.configChanged(),
    fail: (index, err) => ctx.fail(index, err),
    log: ctx.log,
    counters: ctx.counters,
  };
}
