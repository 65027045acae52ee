/**
 * Block I/O on worker threads of its own, so the event loop never waits for the disk and pays
 * no thread-pool round trip per request.
 *
 * The event loop fills slots of a shared ring per thread (io-ring.ts) and publishes them once per
 * turn of the microtask queue, so a batch of requests popped from a virtqueue costs at most one
 * Atomics.notify, and none while the thread is still busy. The thread performs them with
 * blocking preadv/pwritev straight on the guest's buffers and wakes the event loop through one
 * eventfd that all the threads share, watched on the loop's epoll set, and only when no earlier
 * wake-up is unread: completions arrive in batches, which the queue server publishes with one
 * used-buffer notification. Compared with node:fs/promises (one libuv work item, one thread
 * wake-up and one promise chain per call) this removes most of the event loop's work per
 * request: see "Threading" in docs/performance.md.
 *
 * Requests on one thread run one after another; several threads let a real disk see several at
 * once. Starting a Node worker takes tens of milliseconds compiled and hundreds from source
 * (docs/performance.md, "The block I/O threads after a pause"), far more than a read. So the
 * first thread starts ahead of need when its owner expects I/O soon (warm(): a front-end
 * connected), or else with the first transfer; another starts only when every thread that serves
 * is busy, and a thread still loading takes transfers only while no other can. A thread never
 * stops while it is the last one: idle, it sleeps in Atomics.wait, which costs no CPU, and the
 * first request after a pause finds it at once, as it would find QEMU's or SPDK's I/O threads.
 * Threads beyond the first stop when left idle for a while (a Node worker holds about 10 MiB),
 * and start again only when every serving thread is busy.
 */
import { Worker } from 'node:worker_threads';
import { EventFd } from '../native/eventfd.ts';
import { type Watcher, watch } from '../native/readiness.ts';
import { SyscallError } from '../native/syscall-error.ts';
import { Counter, IoRing, MAX_IOVECS, Op, SLOTS } from './io-ring.ts';
import type { IoThreadData } from './io-thread-worker.ts';

export { MAX_IOVECS, Op };

/**
 * What a new I/O thread runs. Compiled (dist/, the `paravirt` command), this module sits beside
 * io-thread-worker.js, plain JavaScript the thread runs as is. Run from source (.ts, under tsx),
 * the thread needs the TypeScript loader first, which a worker does not inherit from tsx's
 * register(): io-thread-boot.mjs registers it, then imports `entry`.
 */
const THREAD: { readonly url: URL; readonly entry?: string } = new URL(import.meta.url).pathname.endsWith('.ts')
  ? { url: new URL('./io-thread-boot.mjs', import.meta.url), entry: new URL('./io-thread-worker.ts', import.meta.url).href }
  : { url: new URL('./io-thread-worker.js', import.meta.url) };

/** How a vectored call on an I/O thread ended: the bytes transferred, or its error. Called with the call's tag; must not throw. */
export type CallDone<T> = (tag: T, result: number | Error) => void;

interface Transfer {
  readonly op: Op;
  readonly fd: number;
  readonly position: number;
  /** Held until the transfer completes: the thread writes into (or reads from) their memory. */
  readonly segments: readonly Uint8Array[];
  readonly done: CallDone<unknown>;
  readonly tag: unknown;
}

/** One I/O thread and its ring, seen from the event loop. */
class IoThread {
  readonly ring = new IoRing();
  readonly worker: Worker;
  readonly exited: Promise<void>;
  /** The transfer in each slot of the ring. */
  private readonly inRing: (Transfer | undefined)[] = new Array<Transfer | undefined>(SLOTS);
  /** Transfers for which the ring had no free slot, oldest first. */
  private readonly waiting: Transfer[] = [];
  private submitted = 0;
  private completed = 0;
  private publishScheduled = false;
  private readonly publishTurn = (): void => this.publish();

  /** Whether the thread has loaded and serves its ring; once true, stays true. */
  private loaded = false;

  constructor(wake: Omit<IoThreadData, 'buffer'>, onError: (err: Error) => void) {
    const data: IoThreadData & { entry?: string } = { ...wake, entry: THREAD.entry, buffer: this.ring.buffer };
    this.worker = new Worker(THREAD.url, { workerData: data });
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.on('error', onError);
  }

  /** Transfers submitted and not yet settled. */
  get inFlight(): number {
    return ((this.submitted - this.completed) | 0) + this.waiting.length;
  }

  get ready(): boolean {
    return (this.loaded ||= Atomics.load(this.ring.control, Counter.ready) !== 0);
  }

  submit(t: Transfer): void {
    if (this.waiting.length > 0 || !this.place(t)) this.waiting.push(t);
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
      queueMicrotask(this.publishTurn);
    }
    return true;
  }

  /** Make the filled slots visible; wake the thread only if it sleeps (see the worker's loop). */
  publish(): void {
    const { control } = this.ring;
    this.publishScheduled = false;
    Atomics.store(control, Counter.submitted, this.submitted);
    if (Atomics.load(control, Counter.sleeping) !== 0) Atomics.notify(control, Counter.submitted);
  }

  /** Settle every transfer the thread finished, then refill the ring from the waiting ones. */
  collect(): void {
    const end = Atomics.load(this.ring.control, Counter.completed);
    while (this.completed !== end) {
      const s = this.completed & (SLOTS - 1);
      const t = this.inRing[s]!;
      this.inRing[s] = undefined;
      this.completed = (this.completed + 1) | 0;
      const result = this.ring.result(s);
      t.done(t.tag, result >= 0 ? result : new SyscallError(t.op === Op.read ? 'preadv2' : 'pwritev2', -result, `at byte ${t.position} of fd ${t.fd}`));
    }
    while (this.waiting.length > 0 && this.place(this.waiting[0])) this.waiting.shift();
  }

  /** Reject everything not settled yet with `err`. */
  fail(err: Error): void {
    const dropped = [...this.inRing, ...this.waiting.splice(0)];
    this.inRing.fill(undefined);
    for (const t of dropped) t?.done(t.tag, err);
  }

  /** Ask the thread to exit once its ring is empty. */
  stop(): void {
    Atomics.store(this.ring.control, Counter.stop, 1);
    this.publish();
  }
}

/** How long threads beyond the first may sit idle before they stop. */
const IDLE_STOP_MS = 5000;

export class IoThreads {
  private threads: IoThread[] = [];
  private startedCount = 0;
  /** Threads stopped for idleness and not yet exited, which close() waits for. */
  private readonly stopped = new Set<IoThread>();
  /** When the last transfer was submitted (Date.now()). */
  private lastUse = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly wake = EventFd.create();
  private readonly wakePending = new SharedArrayBuffer(4);
  private readonly wakeFlag = new Int32Array(this.wakePending);
  private readonly watcher: Watcher;
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;

  /**
   * Up to `max` threads (at least 1). The first starts with warm() or the first transfer, not
   * here: a back-end waiting for its front-end then holds no thread (a Node worker is about
   * 10 MiB). After `idleMs` without a transfer, every thread but the first stops.
   */
  constructor(
    private readonly max: number,
    private readonly idleMs = IDLE_STOP_MS,
  ) {
    this.watcher = watch(this.wake.fd, { readable: () => this.collect() });
    this.watcher.unref();
  }

  /** Threads running now. */
  get running(): number {
    return this.threads.length;
  }

  /** Threads started so far, including those that stopped since. */
  get started(): number {
    return this.startedCount;
  }

  /** Transfers submitted and not yet settled, on all threads. */
  get inFlight(): number {
    return this.threads.reduce((n, t) => n + t.inFlight, 0);
  }

  /**
   * Start the first thread now, if none runs, so that the first transfer does not wait for it
   * to load; it then parks until there is work. Does nothing once closed or failed.
   */
  warm(): void {
    if (this.threads.length === 0 && this.failure === undefined && this.closing === undefined) this.start();
  }

  /**
   * Read into or write out of `segments` (at most MAX_IOVECS) at byte `position` of `fd`, then
   * call `done(tag, result)` with the bytes transferred, which may be fewer than asked (end of
   * file), or the failed call's SyscallError; at once when the threads have failed or closed.
   */
  submit<T>(op: Op, fd: number, position: number, segments: readonly Uint8Array[], done: CallDone<T>, tag: T): void {
    if (this.failure !== undefined) {
      done(tag, this.failure);
      return;
    }
    this.lastUse = Date.now();
    const thread = this.pick();
    // An idle thread keeps no process alive; one with a transfer in flight does.
    if (thread.inFlight === 0) thread.worker.ref();
    thread.submit({ op, fd, position, segments, done: done as CallDone<unknown>, tag });
  }

  /**
   * The least busy thread that serves. When every one is busy, another starts, one at a time;
   * it takes transfers once it has loaded, except the first, which has no other to wait on.
   */
  private pick(): IoThread {
    let best: IoThread | undefined;
    let loading: IoThread | undefined;
    for (const t of this.threads) {
      if (!t.ready) loading = t;
      else if (best === undefined || t.inFlight < best.inFlight) best = t;
    }
    if (best !== undefined && best.inFlight === 0) return best;
    if (loading === undefined && this.threads.length < this.max) loading = this.start();
    return best ?? loading!;
  }

  private start(): IoThread {
    const thread = new IoThread({ wakeFd: this.wake.fd, wakePending: this.wakePending }, (err) => this.fail(err));
    thread.worker.unref();
    this.threads.push(thread);
    this.startedCount++;
    if (this.threads.length > 1) this.idleTimer ??= this.idleCheck(this.idleMs);
    return thread;
  }

  /** In `ms`, stop the threads but the first if nothing was submitted for idleMs and nothing is in flight; else look again later. */
  private idleCheck(ms: number): NodeJS.Timeout {
    const timer = setTimeout(() => {
      const idleFor = Date.now() - this.lastUse;
      if (this.closing !== undefined) this.idleTimer = undefined;
      else if (this.inFlight > 0 || idleFor < this.idleMs) this.idleTimer = this.idleCheck(Math.max(1, this.idleMs - idleFor));
      else {
        this.idleTimer = undefined;
        for (const t of this.threads.splice(1)) {
          t.stop();
          this.stopped.add(t);
          void t.exited.then(() => this.stopped.delete(t));
        }
      }
    }, ms);
    timer.unref();
    return timer;
  }

  private collect(): void {
    this.wake.take();
    // Cleared before the rings are read: a transfer finishing after that signals again.
    Atomics.store(this.wakeFlag, 0, 0);
    for (const t of this.threads) {
      t.collect();
      if (t.inFlight === 0) t.worker.unref();
    }
  }

  /** A thread died (it could not start, or crashed): every transfer, now and later, fails. */
  private fail(err: Error): void {
    this.failure ??= new Error(`block I/O thread failed: ${err.message}`, { cause: err });
    for (const t of this.threads) t.fail(this.failure);
  }

  /** Let the threads finish what they were given, then stop them and release the eventfd. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    clearTimeout(this.idleTimer);
    for (const t of this.threads) t.stop();
    // Waited for with the process kept alive: a thread stopped while still loading exits only once loaded.
    const exiting = [...this.threads, ...this.stopped];
    for (const t of exiting) t.worker.ref();
    await Promise.all(exiting.map((t) => t.exited));
    if (this.failure === undefined) this.collect();
    this.failure ??= new Error('block I/O threads are closed');
    for (const t of this.threads) t.fail(this.failure);
    this.threads = [];
    this.watcher.close();
    this.wake.close();
  }
}
