/**
 * A driver-side queue as a request/response API. Two ways in:
 *
 * - `submit(out, in)` resolves with the used length once the device returns the buffer;
 * - `start(request)` takes a QueueRequest the caller keeps and reuses, and calls it back: the
 *   path for drivers that must not allocate per request (a promise and its closures are garbage
 *   on every request; a kept object is not).
 *
 * Requests wait (in order) while the ring is full, and are kicked in batches: one kick per turn
 * of the microtask queue, or per quarter ring of requests added in it when more are, and only when
 * the device asked for one (event suppression, §2.7.10 / §2.8.10).
 *
 * With a poll budget, a queue that has requests in flight and just had some completed keeps
 * looking at its used ring on every turn of the event loop, with used-buffer notifications off,
 * until nothing came back for its adaptive window (poll-window.ts); then it re-enables them and
 * sleeps. A queue with nothing in flight never polls, so an idle driver costs nothing.
 *
 * The request itself is the ring's token: the ring keeps one record per buffer in flight (and
 * refuses a used id that is not in flight, a ring fault), so the queue keeps no table of its own
 * and a request costs one structure on `add` and one on `getUsed`.
 *
 * The device is not trusted: a used id not in flight fails the queue (the ring's check), a used
 * length beyond the writable part is clamped (and logged once).
 */
import type { Logger } from 'pino';
import { PollWindow } from './poll-window.ts';
import type { DriverQueue, Segment } from './queue.ts';

/** The ring a RequestQueue runs: its tokens are the requests, which it can list when the queue fails. */
export interface RequestRing extends DriverQueue<QueueRequest> {
  /** The tokens of every buffer in flight (made available and not yet returned by getUsed()). */
  tokensInFlight(): QueueRequest[];
}

/**
 * A request a driver keeps and starts again and again. The queue reads `out` and `inSegs` when
 * it places the request in the ring (at start(), or later when it had to wait for room), and
 * calls exactly one of the callbacks per start. A request is started again only after that, and
 * its `inSegs` stay as placed until then (a used length is checked against them).
 */
export interface QueueRequest {
  /** Device-readable segments. */
  readonly out: readonly Segment[];
  /** Device-writable segments, after the readable ones. */
  readonly inSegs: readonly Segment[];
  /** The device returned the buffer having written `len` bytes (at most the total of inSegs). */
  completed(len: number): void;
  /** The request will not complete: the queue failed (reset, DEVICE_NEEDS_RESET, close) or it can never fit. */
  failed(err: Error): void;
}

/**
 * A request whose buffer is one device-readable segment at `addr` (its `out` is that one
 * segment, its `inSegs` none), started a burst at a time with RequestQueue.startReadable().
 */
export interface ReadableRequest extends QueueRequest {
  readonly addr: number;
}

/** A submit() in flight: a QueueRequest that settles a promise. */
class PromisedRequest implements QueueRequest {
  constructor(
    readonly out: readonly Segment[],
    readonly inSegs: readonly Segment[],
    readonly completed: (len: number) => void,
    readonly failed: (err: Error) => void,
  ) {}
}

function writableBytes(segs: readonly Segment[]): number {
  let n = 0;
  for (let i = 0; i < segs.length; i++) n += segs[i].len;
  return n;
}

/**
 * The fewest requests added in one turn that are made available to the device (§2.7.13 /
 * §2.8.21) before the turn ends: DPDK's transmit burst. A queue publishes every quarter of its
 * ring (publishBatch), so that a caller filling the whole ring in one go (a net sender) has a
 * device that works on the first quarter while it adds the rest, instead of one that idles until
 * the last is in. Each publication is a sequentially consistent store, a fence that waits for
 * every store before it (the frames' and descriptors' cache-line misses among them), and a look
 * at the device's notification suppression: on a 256-entry packed ring, publishing every 64
 * rather than every 32 took 13-15 % less CPU per frame (docs/performance.md, "How often a
 * driver publishes").
 */
const MIN_PUBLISH_BATCH = 32;

/**
 * How many times in one turn of the microtask queue reclaim() takes back used buffers: at most
 * that many rings' worth of requests (16 x 256 frames, about 0.4 ms of a net sender) go by before
 * a caller that keeps finding room yields to the event loop. Each turn that ends so costs an
 * event loop round and a poll turn before its sender is woken; against DPDK's net_vhost, which
 * has used every buffer by the time the sender looks, 16 rather than 1 took 7 % (packed) and
 * 10 % (split) off the driver's CPU per frame (docs/performance.md, "A sender's turn, its
 * headers, and the ring a burst at a time").
 */
export const RECLAIMS_PER_TURN = 16;

export interface RequestQueueOptions {
  /**
   * Microseconds to keep polling the used ring after the last completion before sleeping on the
   * device's notification (default 0: never poll).
   */
  readonly pollMicros?: number;
}

export class RequestQueue {
  /** Requests in the ring: added and not yet taken back from getUsed(). */
  private inFlight = 0;
  private readonly waiting: QueueRequest[] = [];
  /** Requests and used lengths of one collection pass, reaped before any callback runs. */
  private readonly reapedRequests: (QueueRequest | undefined)[];
  private readonly reapedLens: Float64Array;
  private kickScheduled = false;
  /** Requests added since the last publication. */
  private unpublished = 0;
  /** How many more times reclaim() may take back used buffers in this turn. */
  private reclaimsLeft = RECLAIMS_PER_TURN;
  private failedWith: Error | undefined;
  private warnedLength = false;
  private readonly poll: PollWindow;
  /** Requests added in one turn per publication: a quarter of the ring, at least MIN_PUBLISH_BATCH. */
  private readonly publishBatch: number;
  private pollScheduled = false;
  private collecting = false;
  /** Whether used-buffer notifications were last turned on (the ring starts with them on). */
  private notificationsOn = true;
  private readonly kickTurn = (): void => {
    this.kickScheduled = false;
    this.reclaimsLeft = RECLAIMS_PER_TURN;
    this.publish();
  };
  private readonly pollTurn = (): void => {
    this.pollScheduled = false;
    this.collect();
  };

  constructor(
    private readonly ring: RequestRing,
    /** Name for messages, e.g. "rng.q0". */
    readonly name: string,
    /** Available buffer notification to the device. */
    private readonly notifyDevice: () => void,
    private readonly log: Logger,
    options: RequestQueueOptions = {},
  ) {
    const size = ring.size;
    this.reapedRequests = new Array<QueueRequest | undefined>(size).fill(undefined);
    this.reapedLens = new Float64Array(size);
    this.poll = new PollWindow(options.pollMicros ?? 0);
    this.publishBatch = Math.max(MIN_PUBLISH_BATCH, size >> 2);
  }

  get size(): number {
    return this.ring.size;
  }

  /**
   * Why the queue failed (DEVICE_NEEDS_RESET, a ring fault, the driver closed), or undefined
   * while it runs. Once set it stays: every request started from then on fails at once, within
   * start(), so a caller that reuses requests in a loop (a sender filling free buffers) reads it
   * to stop instead of going round for ever.
   */
  get failure(): Error | undefined {
    return this.failedWith;
  }

  /** Requests submitted and not completed, in the ring or waiting for room. */
  get outstanding(): number {
    return this.inFlight + this.waiting.length;
  }

  /**
   * Expose `out` (device-readable) then `inSegs` (device-writable) and resolve with the number
   * of bytes the device wrote, at most the total of `inSegs`.
   */
  submit(out: readonly Segment[], inSegs: readonly Segment[]): Promise<number> {
    return new Promise<number>((resolve, reject) => this.start(new PromisedRequest(out, inSegs, resolve, reject)));
  }

  /**
   * Start `req`: place it in the ring, or queue it behind the requests waiting for room. Its
   * `failed` is called at once when the queue has failed or the ring refuses the request.
   */
  start(req: QueueRequest): void {
    if (this.failedWith !== undefined) {
      req.failed(this.failedWith);
      return;
    }
    if (req.out.length + req.inSegs.length === 0) {
      req.failed(new RangeError(`${this.name}: a request needs at least one buffer segment`));
      return;
    }
    // Keep submission order: nothing overtakes a request already waiting for room.
    if (this.waiting.length > 0) {
      this.waiting.push(req);
      return;
    }
    if (!this.tryPlace(req)) this.waiting.push(req);
  }

  /**
   * start() of reqs[0..count), in that order: requests whose buffers are one device-readable
   * segment of `len` bytes at their `addr`, as a net driver's transmit burst. They go into the
   * ring in one pass, with no Segment read per request, and are published as start() publishes:
   * each time a publication's worth has been added, and the rest at the turn's end.
   */
  startReadable(reqs: readonly ReadableRequest[], count: number, len: number): void {
    let i = 0;
    if (this.failedWith === undefined && this.waiting.length === 0) {
      const ring = this.ring;
      for (; i < count; i++) {
        const req = reqs[i];
        let placed: boolean;
        try {
          placed = ring.addSegment(req.addr, len, false, req);
        } catch (err) {
          // A segment the ring refuses (a length beyond 32 bits, say) fails that request alone.
          req.failed(err instanceof Error ? err : new Error(String(err)));
          continue;
        }
        if (!placed) break;
        this.inFlight++;
        if (++this.unpublished >= this.publishBatch && !this.collecting) this.publish();
      }
      if (this.unpublished > 0) this.scheduleKick();
    }
    // What found the ring full (or the queue failed, or requests waiting) goes the way of start().
    for (; i < count; i++) this.start(reqs[i]);
  }

  /** place(), with segments the ring refuses (a length beyond 32 bits, say) failing that request alone. */
  private tryPlace(req: QueueRequest): boolean {
    try {
      return this.place(req);
    } catch (err) {
      req.failed(err instanceof Error ? err : new Error(String(err)));
      return true;
    }
  }

  /** Move requests that waited for room into the ring, oldest first, while it has room. */
  private placeWaiting(): void {
    while (this.waiting.length > 0 && this.tryPlace(this.waiting[0])) this.waiting.shift();
  }

  /**
   * Add a request to the ring, or fail it when it can never fit; false when it has to wait
   * for the device to return buffers.
   */
  private place(req: QueueRequest): boolean {
    if (this.ring.add(req.out, req.inSegs, req)) {
      this.inFlight++;
      // Not from inside collect(): buffers a completion re-posts (a receive ring) made available
      // there would let the device refill them before collect() looks again, and one pass could
      // then run on ring after ring without yielding to whoever consumes the completions.
      if (++this.unpublished >= this.publishBatch && !this.collecting) this.publish();
      else this.scheduleKick();
      return true;
    }
    if (this.inFlight > 0) return false;
    // Nothing in flight, so the ring is empty: a request that does not fit now never will.
    const segments = req.out.length + req.inSegs.length;
    req.failed(new RangeError(`${this.name}: a request of ${segments} segments does not fit a queue of size ${this.ring.size}`));
    return true;
  }

  /** Make the requests added so far available to the device, and notify it if it asked (§2.7.13, §2.8.21). */
  private publish(): void {
    this.unpublished = 0;
    if (this.failedWith === undefined && this.ring.kick()) this.notifyDevice();
  }

  /**
   * Take back the buffers the device has used by now, at once rather than on the next poll turn
   * or notification: for a caller that found no room (a sender out of transmit buffers), as
   * DPDK's transmit path frees used descriptors when it runs short. At most RECLAIMS_PER_TURN
   * times per turn of the microtask queue, so a sender that keeps finding room still yields to
   * the event loop. Returns whether it looked.
   */
  reclaim(): boolean {
    if (this.reclaimsLeft === 0 || this.failedWith !== undefined) return false;
    this.reclaimsLeft--;
    // The turn's end renews the allowance (and kicks whatever the caller adds meanwhile).
    this.scheduleKick();
    // What was added and not yet published cannot have been used: publish it first, so that the
    // device works on it while the caller goes on.
    this.publish();
    this.collect();
    return true;
  }

  private scheduleKick(): void {
    if (this.kickScheduled) return;
    this.kickScheduled = true;
    queueMicrotask(this.kickTurn);
  }

  /**
   * A used buffer notification arrived (or a poll turn came): complete what the device
   * returned, fill the room it made, and either poll on or sleep on the next notification.
   */
  collect(): void {
    // A completion callback that ends up here (through a transport calling back at once) finds
    // the loop below running, which looks at the ring again anyway.
    if (this.failedWith !== undefined || this.collecting) return;
    this.collecting = true;
    try {
      for (;;) {
        // Only when they were on: a store on every poll turn would take a cache line the device
        // reads (the split ring's flags sit beside avail->idx, used_event beside ring entries).
        if (this.notificationsOn) {
          this.ring.disableInterrupts();
          this.notificationsOn = false;
        }
        this.poll.look();
        const found = this.reap();
        if (found < 0) return;
        // Requests that waited for room go first: they were submitted before any a callback adds.
        this.placeWaiting();
        this.dispatch(found);
        if (this.failedWith !== undefined) return;
        const polling = this.poll.keepPolling(found);
        if (polling && this.inFlight > 0) {
          this.schedulePoll();
          return;
        }
        // §2.7.10: re-enabling can race with the device; a true return means more are already used.
        this.notificationsOn = true;
        if (!this.ring.enableInterrupts()) {
          // Nothing in flight, but a caller woken by these completions may start its next
          // requests in a later microtask (after awaiting room): look once more on the next turn,
          // which polls on if they came and otherwise leaves the queue asleep.
          if (polling && found > 0) this.schedulePoll();
          return;
        }
      }
    } finally {
      this.collecting = false;
    }
  }

  /**
   * Take every used buffer off the ring into reapedRequests/Lens before any
   * callback runs (a callback may start requests, which must not change the ring under this
   * loop). Returns how many, or -1 when the ring broke.
   */
  private reap(): number {
    const reqs = this.reapedRequests;
    const lens = this.reapedLens;
    let n: number;
    try {
      // Never more than the ring holds in flight; a device repeating itself is a ring fault. The
      // ring hands back only tokens it has in flight: it refuses any other used id. A fault
      // behind buffers already used ends this pass with those, and the next pass raises it.
      n = this.ring.takeUsed(reqs, lens, reqs.length);
    } catch (err) {
      this.fail(new Error(`${this.name}: device broke the ring protocol: ${err instanceof Error ? err.message : String(err)}`));
      return -1;
    }
    this.inFlight -= n;
    for (let i = 0; i < n; i++) {
      const len = lens[i];
      // A device that wrote nothing (a transmit buffer) needs no look at the segments.
      if (len === 0) continue;
      const writable = writableBytes(reqs[i]!.inSegs);
      if (len > writable) {
        if (!this.warnedLength) {
          this.warnedLength = true;
          this.log.warn({ queue: this.name }, `${this.name}: device claimed ${len} bytes written into ${writable}; clamped`);
        }
        lens[i] = writable;
      }
    }
    return n;
  }

  /** Call back the `count` requests reap() took off the ring. */
  private dispatch(count: number): void {
    const reqs = this.reapedRequests;
    for (let i = 0; i < count; i++) {
      const req = reqs[i]!;
      reqs[i] = undefined;
      try {
        req.completed(this.reapedLens[i]);
      } catch (err) {
        this.log.error({ err, queue: this.name }, `${this.name}: a request's completion failed`);
      }
    }
  }

  private schedulePoll(): void {
    if (this.pollScheduled) return;
    this.pollScheduled = true;
    // After the event loop's I/O callbacks: the control plane and other queues keep running.
    setImmediate(this.pollTurn);
  }

  /** Fail every outstanding and future request with `err` (device reset, NEEDS_RESET, close). */
  fail(err: Error): void {
    if (this.failedWith !== undefined) return;
    this.failedWith = err;
    // The queue never touches the ring again: what it holds fails here, once.
    const all = this.ring.tokensInFlight();
    all.push(...this.waiting);
    this.waiting.length = 0;
    this.inFlight = 0;
    for (const req of all) {
      try {
        req.failed(err);
      } catch (e) {
        this.log.error({ err: e, queue: this.name }, `${this.name}: a request's failure handler failed`);
      }
    }
  }
}
