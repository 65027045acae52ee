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
import type { RequestQueue } from './request-queue.ts';

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

export class EventReceiver {
  /** Settles when every buffer is back for good (the queue failed) and their memory was freed. */
  readonly stopped: Promise<void>;
  private delivered = 0;

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
    const cycles = Array.from({ length: count }, (_, i) => this.cycle(addr + i * bufferSize));
    this.stopped = Promise.all(cycles).then(() => dma.free(addr));
  }

  /** Buffers the device has returned so far. */
  get received(): number {
    return this.delivered;
  }

  /** Keep one buffer posted: hand each filling to onBuffer, post it again at once. */
  private async cycle(addr: number): Promise<void> {
    const { bufferSize, onBuffer, log } = this.options;
    for (;;) {
      let len: number;
      try {
        len = await this.queue.submit([], [{ addr, len: bufferSize }]);
      } catch {
        return; // the queue failed or the driver closed
      }
      this.delivered++;
      try {
        onBuffer(this.memory.slice(addr, len));
      } catch (err) {
        log.error({ err }, `${this.queue.name}: event consumer failed`);
      }
    }
  }
}
