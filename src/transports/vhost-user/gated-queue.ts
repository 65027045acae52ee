/**
 * The DeviceQueue a device sees behind vhost-user. The front-end can stop a ring (GET_VRING_BASE),
 * swap guest memory under it (SET_MEM_TABLE, ADD/REM_MEM_REG) or reset the device at any moment,
 * while the device may still hold chains it popped earlier. The gate lets the back-end close the
 * ring to new work, wait until every chain already popped has been pushed and published, and then
 * replace or drop the ring underneath without the device noticing: the device keeps the same
 * object for as long as the ring runs, across memory changes.
 */
import type { DescriptorChain, DeviceQueue, SpanVisitor } from '../../virtio/queue.ts';

/** What a detached gate forwards to: an empty ring that never touches memory. */
const DETACHED: DeviceQueue = {
  size: 0,
  base: 0,
  inFlight: 0,
  pop: () => null,
  push: () => {},
  unpop: () => {},
  publish: () => false,
  enableNotifications: () => false,
  disableNotifications: () => {},
};

export class GatedQueue implements DeviceQueue {
  private inner: DeviceQueue;
  private open = true;
  private waiters: (() => void)[] = [];

  constructor(inner: DeviceQueue) {
    this.inner = inner;
  }

  get size(): number {
    return this.inner.size;
  }

  get base(): number {
    return this.inner.base;
  }

  get inFlight(): number {
    return this.inner.inFlight;
  }

  /** Whether pop() may hand out chains. */
  get isOpen(): boolean {
    return this.open;
  }

  /** A closed gate pops nothing, so a device that drains in a loop simply finds the ring empty. */
  pop(): DescriptorChain | null {
    return this.open ? this.inner.pop() : null;
  }

  /** As pop(): nothing through a closed gate, and nothing from a ring that cannot drain spans (pop() serves it). */
  drainSpans(visit: SpanVisitor, max: number): number {
    return this.open && this.inner.drainSpans !== undefined ? this.inner.drainSpans(visit, max) : 0;
  }

  push(chain: DescriptorChain, written: number): void {
    this.inner.push(chain, written);
  }

  publish(): boolean {
    const notify = this.inner.publish();
    // Completion is observed here, not in push(): a waiter may only proceed once the used
    // entries are visible to the driver, because the next step may hand the ring back.
    this.settled();
    return notify;
  }

  /** A chain given back is no longer in flight, and its position is the ring's again: nothing to publish. */
  unpop(chain: DescriptorChain): void {
    this.inner.unpop(chain);
    this.settled();
  }

  private settled(): void {
    if (this.inner.inFlight !== 0 || this.waiters.length === 0) return;
    const waiting = this.waiters;
    this.waiters = [];
    queueMicrotask(() => {
      for (const w of waiting) w();
    });
  }

  enableNotifications(): boolean {
    return this.open ? this.inner.enableNotifications() : false;
  }

  disableNotifications(): void {
    this.inner.disableNotifications();
  }

  /** Stop handing out chains and resolve once every chain popped so far has been published. */
  close(): Promise<void> {
    this.open = false;
    if (this.inner.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /**
   * Hand out chains again, from `inner` when given (the same ring rebuilt over new memory at
   * the same position). Replacing the ring is only valid once close() has resolved.
   */
  reopen(inner?: DeviceQueue): void {
    if (inner !== undefined) {
      if (this.inner.inFlight !== 0) throw new Error('a gated queue was rebuilt with chains in flight');
      this.inner = inner;
    }
    this.open = true;
  }

  /**
   * Cut the gate from its ring for good: whatever the device still does with this object
   * reaches no guest memory, so the mappings can go. Normally after close() resolved; a ring
   * that fails is detached at once, and anyone waiting in close() is released.
   */
  detach(): void {
    this.open = false;
    this.inner = DETACHED;
    // Chains still out will never come back through this gate: nobody may wait for them.
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) w();
  }
}
