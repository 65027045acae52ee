/**
 * A driver-side queue as a request/response API: submit(out, in) resolves with the used length
 * once the device returns the buffer. Requests are matched by token, wait (in order, without
 * polling) while the ring is full, and are kicked in batches: one kick per turn of the
 * microtask queue however many requests were added in it.
 *
 * The device is not trusted: a used length beyond the writable part is clamped (and logged
 * once), a token the driver never issued is ignored, and a ring fault fails the queue.
 */
import type { Logger } from 'pino';
import type { DriverQueue, Segment } from './queue.ts';

interface Pending {
  readonly out: readonly Segment[];
  readonly inSegs: readonly Segment[];
  /** Total device-writable bytes: the most a used length may claim. */
  readonly writable: number;
  resolve(len: number): void;
  reject(err: Error): void;
}

export class RequestQueue {
  private readonly inFlight = new Map<number, Pending>();
  private readonly waiting: Pending[] = [];
  private nextToken = 0;
  private kickScheduled = false;
  private failure: Error | undefined;
  private warnedLength = false;

  constructor(
    private readonly ring: DriverQueue<number>,
    /** Name for messages, e.g. "rng.q0". */
    readonly name: string,
    /** Available buffer notification to the device. */
    private readonly notifyDevice: () => void,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.ring.size;
  }

  /** Requests submitted and not completed, in the ring or waiting for room. */
  get outstanding(): number {
    return this.inFlight.size + this.waiting.length;
  }

  /**
   * Expose `out` (device-readable) then `inSegs` (device-writable) and resolve with the number
   * of bytes the device wrote, at most the total of `inSegs`.
   */
  submit(out: readonly Segment[], inSegs: readonly Segment[]): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      if (this.failure !== undefined) {
        reject(this.failure);
        return;
      }
      if (out.length + inSegs.length === 0) {
        reject(new RangeError(`${this.name}: a request needs at least one buffer segment`));
        return;
      }
      const writable = inSegs.reduce((n, s) => n + s.len, 0);
      const req: Pending = { out, inSegs, writable, resolve, reject };
      // Keep submission order: nothing overtakes a request already waiting for room.
      if (this.waiting.length > 0 || !this.place(req)) this.waiting.push(req);
    });
  }

  /**
   * Add a request to the ring, or reject it when it can never fit; false when it has to wait
   * for the device to return buffers.
   */
  private place(req: Pending): boolean {
    const token = this.nextToken;
    if (this.ring.add(req.out, req.inSegs, token)) {
      this.nextToken++;
      this.inFlight.set(token, req);
      this.scheduleKick();
      return true;
    }
    if (this.inFlight.size > 0) return false;
    // Nothing in flight, so the ring is empty: a request that does not fit now never will.
    const segments = req.out.length + req.inSegs.length;
    req.reject(new RangeError(`${this.name}: a request of ${segments} segments does not fit a queue of size ${this.ring.size}`));
    return true;
  }

  private scheduleKick(): void {
    if (this.kickScheduled) return;
    this.kickScheduled = true;
    queueMicrotask(() => {
      this.kickScheduled = false;
      if (this.failure === undefined && this.ring.kick()) this.notifyDevice();
    });
  }

  /** A used buffer notification arrived: complete what the device returned, then fill the room it made. */
  collect(): void {
    if (this.failure !== undefined) return;
    try {
      do {
        this.ring.disableInterrupts();
        for (let used = this.ring.getUsed(); used !== null; used = this.ring.getUsed()) {
          this.complete(used.token, used.len);
        }
        // §2.7.10: re-enabling can race with the device; a true return means more are already used.
      } while (this.ring.enableInterrupts());
    } catch (err) {
      this.fail(new Error(`${this.name}: device broke the ring protocol: ${err instanceof Error ? err.message : String(err)}`));
      return;
    }
    while (this.waiting.length > 0 && this.place(this.waiting[0])) this.waiting.shift();
  }

  private complete(token: number, len: number): void {
    const req = this.inFlight.get(token);
    if (req === undefined) {
      this.log.warn({ queue: this.name }, `${this.name}: device returned a buffer that is not in flight (token ${token})`);
      return;
    }
    this.inFlight.delete(token);
    if (len > req.writable) {
      if (!this.warnedLength) {
        this.warnedLength = true;
        this.log.warn({ queue: this.name }, `${this.name}: device claimed ${len} bytes written into ${req.writable}; clamped`);
      }
      len = req.writable;
    }
    req.resolve(len);
  }

  /** Reject every outstanding and future request with `err` (device reset, NEEDS_RESET, close). */
  fail(err: Error): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    const all = [...this.inFlight.values(), ...this.waiting];
    this.inFlight.clear();
    this.waiting.length = 0;
    for (const req of all) req.reject(err);
  }
}
