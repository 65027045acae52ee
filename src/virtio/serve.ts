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
import { ChainReader, ChainWriter, type LivenessCheck } from './chain-io.ts';
import { Feature, hasFeature } from './constants.ts';
import type { QueueCounters } from './counters.ts';
import type { DeviceContext } from './device.ts';
import { PollWindow } from './poll-window.ts';
import type { DescriptorChain, DeviceQueue, SpanVisitor } from './queue.ts';

/**
 * One request being served. The object, its reader and writer are the server's and serve the
 * next request once this one went back: a handler uses them until it returns (or its promise
 * settles) and keeps none of them. The same holds for the chain and its views, which the queue
 * refills for a later request once this one is pushed (DeviceQueue.pop).
 */
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
  /** For a handler that returned LATER: the request is done. Call it once, before or after returning. */
  readonly finish: () => void;
}

/** What a handler returns when it calls `req.finish()` itself: no promise per request. */
export const LATER = Symbol('later');

/**
 * Serve one request: synchronously, by returning a promise that settles when it is done, or by
 * returning LATER and calling `req.finish()` when it is done.
 */
export type RequestHandler = (req: Request) => void | Promise<void> | typeof LATER;

/**
 * Serve a request whose chain is one device-readable descriptor and nothing else, given its
 * `length` bytes at `offset` of `bytes` where they lie in guest memory (DeviceQueue.drainSpans):
 * exactly as the queue's RequestHandler would serve it, synchronously, writing nothing back.
 * Read the bytes before returning and keep none of them. A device gives one for its most common
 * request (a transmitted frame) so that it costs no DescriptorChain, reader or slot; every other
 * request, and every request on a queue that cannot drain spans, goes to the RequestHandler.
 */
export type SpanHandler = (bytes: Uint8Array, offset: number, length: number) => void;

/**
 * A popped request, its reader and writer, and whether its handler has finished. Slots are
 * recycled once their request went back to the driver, so serving a request allocates nothing
 * but what the handler itself does (and, for an asynchronous handler, its promise).
 */
class Slot implements Request {
  chain!: DescriptorChain;
  readonly reader = new ChainReader();
  readonly writer = new ChainWriter();
  done = false;
  /** The queue the chain was popped from: it goes back there, or nowhere once that queue is gone. */
  queue: DeviceQueue | undefined;
  /** Settlement callbacks of an asynchronous handler (its promise, or LATER), made once per slot. */
  readonly finish: () => void;
  readonly failed: (err: unknown) => void;

  constructor(server: QueueServer) {
    this.finish = () => server.settle(this);
    this.failed = (err) => {
      server.handlerFailed(err);
      server.settle(this);
    };
  }
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * The poll budget a queue server uses when its context gives none: never poll, sleep on the
 * driver's notification as soon as the ring is empty.
 */
const NO_POLL = 0;

/**
 * Chains served between publishes of the used ring within one drain. A drain that reaches a
 * ring's size of chains (at least this many) goes on in the next turn of the event loop.
 */
const PUBLISH_EVERY = 64;

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
  /** Slots of requests that went back, ready for the next pop. */
  private readonly free: Slot[] = [];
  /** The queue `live` answers for, and the check itself, made once per queue instead of per request. */
  private liveFor: DeviceQueue | undefined;
  private live: LivenessCheck = () => false;
  /** What the queue `liveFor` hands one-descriptor chains to (spanVisitor), when there is a span handler. */
  private visit: SpanVisitor | undefined;
  /** How long an empty ring is polled after its last request: adapted to how far apart requests come (poll-window.ts). */
  private readonly poll: PollWindow;
  private pollScheduled = false;
  private readonly pollTurn = (): void => {
    this.pollScheduled = false;
    this.kick();
  };
  private readonly publishTurn = (): void => {
    this.publishScheduled = false;
    const queue = this.ctx.queue(this.index);
    if (queue !== undefined && queue === this.liveFor) this.publish(queue);
  };

  constructor(
    private readonly ctx: DeviceContext,
    readonly index: number,
    private readonly handler: RequestHandler,
    private readonly spans?: SpanHandler,
  ) {
    this.inOrder = hasFeature(ctx.features, Feature.IN_ORDER);
    this.counters = ctx.counters.queue(index);
    this.poll = new PollWindow(ctx.pollMicros ?? NO_POLL);
  }

  /** Requests handed to the handler that have not finished. */
  get inFlight(): number {
    return this.pending;
  }

  /**
   * Serve everything the driver made available; call from VirtioDevice.queueNotify. With a poll
   * budget, a ring that had work is looked at again on every turn of the event loop (after its
   * I/O callbacks, so the control plane keeps running) until it stayed empty for the budget;
   * notifications stay off meanwhile, so a busy driver stops paying for kicks and the device for
   * wake-ups (QEMU's poll-max-ns, SPDK's pollers). Only then are notifications re-enabled.
   */
  kick(): void {
    const queue = this.ctx.queue(this.index);
    // A kick from inside a handler finds the drain loop running; that loop pops again anyway.
    if (queue === undefined || this.draining) return;
    if (queue !== this.liveFor) {
      this.liveFor = queue;
      this.live = () => this.ctx.queue(this.index) === queue;
      this.visit = this.spans === undefined ? undefined : this.spanVisitor(queue, this.spans);
    }
    const visit = this.visit;
    this.draining = true;
    try {
      for (;;) {
        this.poll.look();
        queue.disableNotifications();
        let popped = 0;
        let full = false;
        while (this.isLive(queue)) {
          const before = popped;
          // One-descriptor chains in a run, up to the next publish; then one chain of any shape.
          const room = PUBLISH_EVERY - (popped % PUBLISH_EVERY);
          const spans = visit === undefined || queue.drainSpans === undefined ? 0 : queue.drainSpans(visit, room);
          popped += spans;
          if (spans < room && this.isLive(queue)) {
            const chain = queue.pop();
            if (chain !== null) {
              popped++;
              this.start(queue, chain);
            }
          }
          if (popped === before) break;
          if (popped % PUBLISH_EVERY === 0 && this.isLive(queue)) {
            // The driver gets its buffers back while the ring is drained, so it refills the ring
            // as the device empties it instead of waiting for the end.
            this.publish(queue);
            full = popped >= queue.size;
            if (full) break;
          }
        }
        // A handler may have reset the device: then the ring is no longer this queue's to touch.
        if (!this.isLive(queue)) break;
        this.publish(queue);
        if (!this.isLive(queue)) break;
        if (full) {
          // A turn's worth (a ring's size, as QEMU's virtio-net tx_burst): the rest next turn,
          // after the event loop's I/O, notifications still off.
          this.poll.keepPolling(popped);
          this.schedulePoll();
          break;
        }
        if (this.poll.keepPolling(popped)) {
          this.schedulePoll();
          break;
        }
        // §2.7.10 / §2.8.10: re-enable, then look again; a buffer made available before the
        // driver could see the re-enable sent no notification and is served now.
        if (!queue.enableNotifications()) break;
      }
    } catch (err) {
      this.ctx.fail(this.index, asError(err));
    } finally {
      this.draining = false;
    }
  }

  private schedulePoll(): void {
    if (this.pollScheduled) return;
    this.pollScheduled = true;
    setImmediate(this.pollTurn);
  }

  private isLive(queue: DeviceQueue): boolean {
    return this.ctx.queue(this.index) === queue;
  }

  /**
   * The visitor `queue.drainSpans` calls: the span handler, then what complete() does for a
   * request that went back (a handler's error logged and counted, the chain still returned), or
   * false once the handler reset the device, so that the queue touches the ring no more.
   */
  private spanVisitor(queue: DeviceQueue, spans: SpanHandler): SpanVisitor {
    const counts = this.counters;
    return (bytes, offset, length) => {
      try {
        spans(bytes, offset, length);
      } catch (err) {
        this.handlerFailed(err);
      }
      if (!this.isLive(queue)) return false;
      counts.requests++;
      counts.readBytes += length;
      this.unpublished++;
      return true;
    };
  }

  private start(queue: DeviceQueue, chain: DescriptorChain): void {
    const slot = this.free.pop() ?? new Slot(this);
    slot.chain = chain;
    slot.queue = queue;
    slot.done = false;
    slot.reader.reset(chain, this.live);
    slot.writer.reset(chain, this.live);
    if (this.inOrder) this.unreturned.push(slot);
    // Counted before the handler runs: a LATER handler may finish() before it returns.
    this.pending++;
    let result: ReturnType<RequestHandler>;
    try {
      result = this.handler(slot);
    } catch (err) {
      this.handlerFailed(err);
      result = undefined;
    }
    if (result === LATER) return;
    if (result instanceof Promise) {
      void result.then(slot.finish, slot.failed);
    } else if (!slot.done) {
      // (A LATER handler that called finish() and then threw is done already.)
      this.pending--;
      this.finished(slot);
    }
  }

  /**
   * An asynchronous handler finished. A second finish() of one request is a device bug that would
   * push the chain twice (and the chain is the queue's record, refilled once pushed): it is
   * logged and ignored while the slot has not served another request yet, which is as far as a
   * check without an allocation per request can see.
   */
  settle(slot: Slot): void {
    if (slot.done) {
      this.handlerFailed(new Error('a request finished more than once'));
      return;
    }
    this.pending--;
    this.finished(slot);
  }

  /** Return a finished request, or with IN_ORDER every finished one no earlier request holds back. */
  private finished(slot: Slot): void {
    slot.done = true;
    if (!this.inOrder) this.complete(slot);
    else while (this.unreturned.length > 0 && this.unreturned[0].done) this.complete(this.unreturned.shift()!);
  }

  /**
   * A handler threw: a device bug, not the driver's doing. The chain still goes back (with what
   * was written) so the driver is not left waiting for it.
   */
  handlerFailed(err: unknown): void {
    this.counters.errors++;
    this.ctx.log.error({ err: asError(err) }, `queue ${this.index}: request handler failed`);
  }

  private complete(slot: Slot): void {
    const queue = slot.queue!;
    const chain = slot.chain;
    const written = slot.writer.written;
    const readBytes = chain.readableLength;
    slot.queue = undefined;
    this.free.push(slot);
    if (!this.isLive(queue)) return;
    try {
      // The chain is the queue's again from here (DeviceQueue.pop): its next pop may refill it.
      queue.push(chain, written);
    } catch (err) {
      this.ctx.fail(this.index, asError(err));
      return;
    }
    const counts = this.counters;
    counts.requests++;
    counts.readBytes += readBytes;
    counts.writtenBytes += written;
    this.unpublished++;
    // Inside a drain the loop publishes at its end; late completions of one tick share a publish.
    if (!this.draining && !this.publishScheduled) {
      this.publishScheduled = true;
      queueMicrotask(this.publishTurn);
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
