/**
 * The queue service loop every device uses. A device gives a handler per queue; the server pops
 * what the driver made available, hands each chain to the handler and returns it used, and takes
 * care of the parts that are easy to get wrong:
 *
 * - a driver's ring fault (VirtqueueError) stops the queue through DeviceContext.fail;
 * - handlers may finish synchronously or later, with many requests in flight; with
 *   VIRTIO_F_IN_ORDER the buffers still go back in the order they were popped (§2.7.9, §2.8.20);
 * - used buffers are published in batches and the driver is notified only when publish() says
 *   it asked to be (§2.7.10 / §2.8.10);
 * - notifications are off while the queue is drained and re-enabled at the end, popping again
 *   when buffers slipped in before the re-enable was visible (the race of §2.7.10);
 * - a request that completes after a reset (or after the queue failed) touches neither its
 *   buffers nor the ring: the queue it came from is no longer the context's queue.
 */
import { ChainReader, ChainWriter } from './chain-io.ts';
import { Feature, hasFeature } from './constants.ts';
import type { QueueCounters } from './counters.ts';
import type { DeviceContext } from './device.ts';
import type { DescriptorChain, DeviceQueue } from './queue.ts';

/** One request being served. */
export interface Request {
  readonly chain: DescriptorChain;
  /** The device-readable part. Reads after a reset return nothing. */
  readonly reader: ChainReader;
  /**
   * The device-writable part; `writer.written` becomes the used length. Writes after a reset
   * are dropped. Views taken with `writer.segments()` are raw guest memory: fill them before
   * the handler's promise settles and do not keep them. Zero-copy I/O already writing into
   * them when the device is reset is beyond any check here: a status register write cannot wait
   * for it in an event loop, and virtio-mmio drivers do not wait for status to read 0 (§2.4).
   * A device that must never write after a reset bounces such data through `writer.write()`.
   */
  readonly writer: ChainWriter;
}

/** Serve one request, synchronously or by returning a promise that settles when it is done. */
export type RequestHandler = (req: Request) => void | Promise<void>;

/** A popped request and whether its handler has finished. */
interface Slot {
  readonly req: Request;
  done: boolean;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

export class QueueServer {
  private draining = false;
  /** Chains pushed and not yet published. */
  private unpublished = 0;
  private publishScheduled = false;
  private pending = 0;
  private readonly inOrder: boolean;
  /** With IN_ORDER: popped requests not yet returned, oldest first. */
  private readonly unreturned: Slot[] = [];
  private readonly counters: QueueCounters;

  constructor(
    private readonly ctx: DeviceContext,
    readonly index: number,
    private readonly handler: RequestHandler,
  ) {
    this.inOrder = hasFeature(ctx.features, Feature.IN_ORDER);
    this.counters = ctx.counters.queue(index);
  }

  /** Requests handed to the handler whose promise has not settled. */
  get inFlight(): number {
    return this.pending;
  }

  /** Serve everything the driver made available; call from VirtioDevice.queueNotify. */
  kick(): void {
    const queue = this.ctx.queue(this.index);
    // A kick from inside a handler finds the drain loop running; that loop pops again anyway.
    if (queue === undefined || this.draining) return;
    this.draining = true;
    try {
      for (;;) {
        queue.disableNotifications();
        for (let chain = queue.pop(); chain !== null; chain = this.isLive(queue) ? queue.pop() : null) {
          this.start(queue, chain);
        }
        this.publish(queue);
        if (!this.isLive(queue) || !queue.enableNotifications()) break;
      }
    } catch (err) {
      this.ctx.fail(this.index, asError(err));
    } finally {
      this.draining = false;
    }
  }

  private isLive(queue: DeviceQueue): boolean {
    return this.ctx.queue(this.index) === queue;
  }

  private start(queue: DeviceQueue, chain: DescriptorChain): void {
    const live = (): boolean => this.isLive(queue);
    const slot: Slot = { req: { chain, reader: new ChainReader(chain, live), writer: new ChainWriter(chain, live) }, done: false };
    if (this.inOrder) this.unreturned.push(slot);
    let result: void | Promise<void>;
    try {
      result = this.handler(slot.req);
    } catch (err) {
      this.handlerFailed(err);
      result = undefined;
    }
    if (result instanceof Promise) {
      this.pending++;
      result
        .catch((err: unknown) => this.handlerFailed(err))
        .then(() => {
          this.pending--;
          this.finished(queue, slot);
        });
    } else {
      this.finished(queue, slot);
    }
  }

  /** Return a finished request, or with IN_ORDER every finished one no earlier request holds back. */
  private finished(queue: DeviceQueue, slot: Slot): void {
    slot.done = true;
    if (!this.inOrder) this.complete(queue, slot.req);
    else while (this.unreturned.length > 0 && this.unreturned[0].done) this.complete(queue, this.unreturned.shift()!.req);
  }

  /**
   * A handler threw: a device bug, not the driver's doing. The chain still goes back (with what
   * was written) so the driver is not left waiting for it.
   */
  private handlerFailed(err: unknown): void {
    this.counters.errors++;
    this.ctx.log.error({ err: asError(err) }, `queue ${this.index}: request handler failed`);
  }

  private complete(queue: DeviceQueue, req: Request): void {
    if (!this.isLive(queue)) return;
    try {
      queue.push(req.chain, req.writer.written);
    } catch (err) {
      this.ctx.fail(this.index, asError(err));
      return;
    }
    const counts = this.counters;
    counts.requests++;
    counts.readBytes += req.chain.readableLength;
    counts.writtenBytes += req.writer.written;
    this.unpublished++;
    // Inside a drain the loop publishes at its end; late completions of one tick share a publish.
    if (!this.draining && !this.publishScheduled) {
      this.publishScheduled = true;
      queueMicrotask(() => {
        this.publishScheduled = false;
        if (this.isLive(queue)) this.publish(queue);
      });
    }
  }

  private publish(queue: DeviceQueue): void {
    if (this.unpublished === 0) return;
    this.unpublished = 0;
    try {
      if (queue.publish()) {
        this.counters.notifications++;
        this.ctx.notifyQueue(this.index);
      } else {
        this.counters.suppressed++;
      }
    } catch (err) {
      this.ctx.fail(this.index, asError(err));
    }
  }
}
