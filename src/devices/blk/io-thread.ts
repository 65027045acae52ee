/**
 * Block I/O on a worker thread of its own, so the event loop never waits for the disk and pays
 * no thread-pool round trip per request.
 *
 * The event loop fills slots of a shared ring (io-ring.ts) and publishes them once per turn of
 * the microtask queue, so a batch of requests popped from a virtqueue costs one Atomics.notify.
 * The thread performs them with blocking preadv/pwritev straight on the guest's buffers and wakes
 * the event loop through an eventfd watched on its own epoll set, again once per batch. Compared
 * with node:fs/promises (one libuv work item, one thread wake-up and one promise chain per call)
 * this removes most of the event loop's work per request: see "Threading" in docs/performance.md.
 *
 * Requests on one thread run one after another; FileBackend spreads its requests over several
 * threads so that a real disk still sees many at once.
 */
import { Worker } from 'node:worker_threads';
import { EventFd } from '../../native/eventfd.ts';
import { type Watcher, watch } from '../../native/readiness.ts';
import { SyscallError } from '../../native/syscall-error.ts';
import { Counter, IoRing, MAX_IOVECS, Op, SLOTS } from './io-ring.ts';
import type { IoThreadData } from './io-thread-worker.ts';

export { MAX_IOVECS, Op };

const BOOT = new URL('./io-thread-boot.mjs', import.meta.url);
const ENTRY = new URL('./io-thread-worker.ts', import.meta.url).href;

interface Transfer {
  readonly op: Op;
  readonly fd: number;
  readonly position: number;
  /** Held until the transfer completes: the thread writes into (or reads from) their memory. */
  readonly segments: readonly Uint8Array[];
  resolve(bytes: number): void;
  reject(err: Error): void;
}

export class IoThread {
  private readonly ring = new IoRing();
  private readonly wake = EventFd.create();
  private readonly watcher: Watcher;
  private readonly worker: Worker;
  private readonly exited: Promise<void>;
  /** The transfer in each slot of the ring. */
  private readonly inRing: (Transfer | undefined)[] = new Array<Transfer | undefined>(SLOTS);
  /** Transfers for which the ring had no free slot, oldest first. */
  private readonly waiting: Transfer[] = [];
  private submitted = 0;
  private completed = 0;
  private publishScheduled = false;
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;

  constructor() {
    const data: IoThreadData & { entry: string } = { entry: ENTRY, buffer: this.ring.buffer, wakeFd: this.wake.fd };
    this.worker = new Worker(BOOT, { workerData: data });
    // An idle thread keeps no process alive; transfer() holds a reference while any is in flight.
    this.worker.unref();
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.on('error', (err) => this.fail(err));
    this.watcher = watch(this.wake.fd, { readable: () => this.collect() });
    this.watcher.unref();
  }

  /** Transfers submitted and not yet settled. */
  get inFlight(): number {
    return ((this.submitted - this.completed) | 0) + this.waiting.length;
  }

  /**
   * Read into or write out of `segments` (at most MAX_IOVECS) at byte `position` of `fd`.
   * Resolves with the bytes transferred, which may be fewer than asked (end of file); a failed
   * call rejects with its SyscallError.
   */
  transfer(op: Op, fd: number, position: number, segments: readonly Uint8Array[]): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      if (this.failure !== undefined) {
        reject(this.failure);
        return;
      }
      if (this.inFlight === 0) this.worker.ref();
      const t: Transfer = { op, fd, position, segments, resolve, reject };
      if (this.waiting.length > 0 || !this.place(t)) this.waiting.push(t);
    });
  }

  /** Put `t` in the next free slot; false when the ring is full. */
  private place(t: Transfer): boolean {
    if (((this.submitted - this.completed) | 0) === SLOTS) return false;
    const s = this.submitted & (SLOTS - 1);
    this.ring.fill(s, t.op, t.fd, t.position, t.segments);
    this.inRing[s] = t;
    this.submitted = (this.submitted + 1) | 0;
    if (!this.publishScheduled) {
      this.publishScheduled = true;
      queueMicrotask(() => this.publish());
    }
    return true;
  }

  private publish(): void {
    this.publishScheduled = false;
    Atomics.store(this.ring.control, Counter.submitted, this.submitted);
    Atomics.notify(this.ring.control, Counter.submitted);
  }

  /** Settle every transfer the thread finished, then refill the ring from the waiting ones. */
  private collect(): void {
    const { control } = this.ring;
    this.wake.take();
    // Cleared before `completed` is read: a transfer finishing after that read signals again.
    Atomics.store(control, Counter.wakePending, 0);
    const end = Atomics.load(control, Counter.completed);
    while (this.completed !== end) {
      const s = this.completed & (SLOTS - 1);
      const t = this.inRing[s]!;
      this.inRing[s] = undefined;
      this.completed = (this.completed + 1) | 0;
      const result = this.ring.result(s);
      if (result >= 0) t.resolve(result);
      else t.reject(new SyscallError(t.op === Op.read ? 'preadv' : 'pwritev', -result, `at byte ${t.position} of fd ${t.fd}`));
    }
    while (this.waiting.length > 0 && this.place(this.waiting[0])) this.waiting.shift();
    if (this.inFlight === 0) this.worker.unref();
  }

  /** The thread died (it could not start, or crashed): every transfer, now and later, fails. */
  private fail(err: Error): void {
    this.failure ??= new Error(`block I/O thread failed: ${err.message}`, { cause: err });
    for (let s = 0; s < SLOTS; s++) this.inRing[s]?.reject(this.failure);
    this.inRing.fill(undefined);
    for (const t of this.waiting.splice(0)) t.reject(this.failure);
  }

  /** Let the thread finish what it was given, then stop it and release its descriptors. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    Atomics.store(this.ring.control, Counter.stop, 1);
    this.publish();
    this.worker.ref();
    await this.exited;
    if (this.failure === undefined) this.collect();
    this.fail(new Error('it was closed'));
    this.watcher.close();
    this.wake.close();
  }
}
