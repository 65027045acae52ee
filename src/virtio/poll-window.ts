/**
 * How long to keep polling a ring after the last piece of work it brought, adapted to how far
 * apart that work comes, in the manner of QEMU's adaptive polling (poll-max-ns, poll-grow,
 * poll-shrink). Both sides of a queue use it: a device's QueueServer polling for available
 * buffers, a driver's RequestQueue polling for used ones.
 *
 * The gap that matters is how long the ring stayed empty: from the end of the work on the last
 * burst to the look that found the next one. The time spent working through a burst is not part
 * of it (QEMU's aio_poll likewise takes its block_ns before it runs the handlers), else a long
 * burst would look like a long pause and shrink the window of a side that is busiest. So a side
 * calls look() as it looks at its ring and keepPolling(found) once it has dealt with what it found.
 *
 * Work that came within the window needs no change; work that came later but within the budget
 * grows the window (polling would have caught it without a wake-up); a gap longer than the budget
 * halves it. So a ring whose peer pauses (or is not scheduled, on a busy host) is spun on less and
 * less for nothing, while a short stall of a busy peer does not throw away what the window learned.
 */

/** The first poll window, in milliseconds, once work comes closer together than the budget. */
const FIRST_WINDOW_MS = 0.004;

/** A monotonic clock in milliseconds. */
export type Clock = () => number;

const monotonic: Clock = () => performance.now();

export class PollWindow {
  /** The most time an empty ring is polled after its last work, in milliseconds (0: never). */
  private readonly maxMs: number;
  /** How long it is polled now, up to maxMs. */
  private windowMs = 0;
  /** When the work on the last burst ended: since then the ring has been empty. */
  private doneAt = -Infinity;
  /** When the current look at the ring began; NaN when none was announced. */
  private lookedAt = Number.NaN;

  /** `budgetMicros` is the budget: 0 never polls. */
  constructor(
    budgetMicros: number,
    private readonly now: Clock = monotonic,
  ) {
    if (!Number.isFinite(budgetMicros) || budgetMicros < 0) throw new RangeError(`poll budget ${budgetMicros} µs is not a non-negative number`);
    this.maxMs = budgetMicros / 1000;
  }

  /** Whether there is a budget at all. */
  get enabled(): boolean {
    return this.maxMs > 0;
  }

  /** The window as it stands, in milliseconds (for tests and tools). */
  get currentMs(): number {
    return this.windowMs;
  }

  /** The side is about to look at its ring: what it finds came within the time until now. */
  look(): void {
    if (this.maxMs > 0) this.lookedAt = this.now();
  }

  /**
   * The look found `found` pieces of work, now dealt with: whether to look again rather than
   * sleep. Without a look() before it, the look is taken to be now.
   */
  keepPolling(found: number): boolean {
    if (this.maxMs === 0) return false;
    const lookedAt = Number.isNaN(this.lookedAt) ? this.now() : this.lookedAt;
    this.lookedAt = Number.NaN;
    if (found === 0) return lookedAt - this.doneAt < this.windowMs;
    const gap = lookedAt - this.doneAt;
    if (gap > this.maxMs) this.windowMs = this.windowMs / 2 < FIRST_WINDOW_MS ? 0 : this.windowMs / 2;
    else if (gap > this.windowMs) this.windowMs = Math.min(this.maxMs, this.windowMs === 0 ? FIRST_WINDOW_MS : 2 * this.windowMs);
    this.doneAt = this.now();
    return this.windowMs > 0;
  }
}
