/**
 * How long to keep polling a ring after the last piece of work it brought, adapted to how far
 * apart that work comes, in the manner of QEMU's adaptive polling (poll-max-ns, poll-grow,
 * poll-shrink). Both sides of a queue use it: a device's QueueServer polling for available
 * buffers, a driver's RequestQueue polling for used ones.
 *
 * Work that came within the window needs no change; work that came later but within the budget
 * grows the window (polling would have caught it without a wake-up); a gap longer than the budget
 * halves it. So a ring whose peer pauses (or is not scheduled, on a busy host) is spun on less and
 * less for nothing, while a short stall of a busy peer does not throw away what the window learned.
 */

/** The first poll window, in milliseconds, once work comes closer together than the budget. */
const FIRST_WINDOW_MS = 0.004;

export class PollWindow {
  /** The most time an empty ring is polled after its last work, in milliseconds (0: never). */
  private readonly maxMs: number;
  /** How long it is polled now, up to maxMs. */
  private windowMs = 0;
  /** When the last look at the ring found work (performance.now()). */
  private lastWork = -Infinity;

  /** `budgetMicros` is the budget: 0 never polls. */
  constructor(budgetMicros: number) {
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

  /** A look at the ring found `found` pieces of work: whether to look again rather than sleep. */
  keepPolling(found: number): boolean {
    if (this.maxMs === 0) return false;
    const now = performance.now();
    if (found > 0) {
      const gap = now - this.lastWork;
      if (gap > this.maxMs) this.windowMs = this.windowMs / 2 < FIRST_WINDOW_MS ? 0 : this.windowMs / 2;
      else if (gap > this.windowMs) this.windowMs = Math.min(this.maxMs, this.windowMs === 0 ? FIRST_WINDOW_MS : 2 * this.windowMs);
      this.lastWork = now;
    }
    return now - this.lastWork < this.windowMs;
  }
}
