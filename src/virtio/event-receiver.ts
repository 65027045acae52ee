/**
 * The driver's half of an event queue (event-queue.ts): device-writable buffers kept posted so
 * the device always has somewhere to write, each handed to a callback the moment the device
 * returns it and posted again at once. Whatever the consumer does, the ring stays full; what it
 * keeps it copies, since the buffer is reused.
 *
 * Used buffers arrive in the order the device returned them (RequestQueue settles them in ring
 * order), which is what a stream or a frame spread over several buffers needs. The device's used
 * length is already clamped to the buffer by RequestQueue. The buffers stay posted until the
 * queue fails (device reset, DEVICE_NEEDS_RESET, close); their memory then goes back.
 */
import type { Logger } from 'pino';
import type { DmaAllocator } from './driver.ts';
import type { GuestMemory } from './memory.ts';
import type { Segment } from './queue.ts';
import type { QueueRequest, RequestQueue } from './request-queue.ts';

export interface EventReceiverOptions {
  /** Bytes per buffer. */
  readonly bufferSize: number;
  /** Buffers kept posted (default the queue size: a full ring). */
  readonly buffers?: number;
  /**
   * One used buffer: the bytes the device wrote, a view of guest memory valid only during the
   * call. A throw is logged and the buffer posted again.
   */
  readonly onBuffer: (bytes: Uint8Array) => void;
  readonly log: Logger;
}

/** One posted buffer and the request that carries it, started again each time it comes back. */
class PostedBuffer implements QueueRequest {
  readonly out: readonly Segment[] = [];
  readonly inSegs: readonly Segment[];

  constructor(
    private readonly receiver: EventReceiver,
    readonly addr: number,
    bufferSize: number,
  ) {
    this.inSegs = [{ addr, len: bufferSize }];
  }

  completed(len: number): void {
    this.receiver.filled(this, len);
  }

  failed(): void {
    this.receiver.retired();
  }
}

export class EventReceiver {
  /** Settles when every buffer is back for good (the queue failed) and their memory was freed. */
  readonly stopped: Promise<void>;
  private delivered = 0;
  private posted: number;
  private stop!: () => void;

  constructor(
    private readonly queue: RequestQueue,
    private readonly memory: GuestMemory,
    dma: DmaAllocator,
    private readonly options: EventReceiverOptions,
  ) {
    const { bufferSize } = options;
    const count = options.buffers ?? queue.size;
    if (!Number.isSafeInteger(bufferSize) || bufferSize < 1) throw new RangeError(`${queue.name}: event buffer size ${bufferSize} is not a positive integer`);
    if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`${queue.name}: event buffer count ${count} is not a positive integer`);
    const addr = dma.alloc(count * bufferSize, 16);
    if (addr === undefined) throw new Error(`${queue.name}: DMA memory exhausted allocating ${count} event buffers of ${bufferSize} bytes`);
    this.posted = count;
    this.stopped = new Promise<void>((resolve) => (this.stop = resolve)).then(() => dma.free(addr));
    for (let i = 0; i < count; i++) queue.start(new PostedBuffer(this, addr + i * bufferSize, bufferSize));
  }

  /** Buffers the device has returned so far. */
  get received(): number {
    return this.delivered;
  }

  /** The device filled `buf` with `len` bytes: hand them to onBuffer, post the buffer again at once. */
  filled(buf: PostedBuffer, len: number): void {
    this.delivered++;
    try {
      this.options.onBuffer(this.memory.slice(buf.addr, len));
    } catch (err) {
      this.options.log.error({ err }, `${this.queue.name}: event consumer failed`);
    }
    this.queue.start(buf);
  }

  /** A buffer is back for good (the queue failed or the driver closed). */
  retired(): void {
    if (--this.posted === 0) this.stop();
  }
}
