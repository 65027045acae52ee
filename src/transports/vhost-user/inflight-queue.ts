/**
 * A split ring whose every chain is recorded in the inflight region while the device holds it
 * (inflight.ts), and which first hands out again the chains a crashed predecessor left in flight.
 * The device sees an ordinary DeviceQueue.
 */
import type { DescriptorChain, DeviceQueue, ResubmittingQueue } from '../../virtio/queue.ts';
import type { SplitInflight } from './inflight.ts';

export class InflightQueue implements DeviceQueue {
  constructor(
    private readonly inner: ResubmittingQueue,
    private readonly record: SplitInflight,
  ) {}

  get size(): number {
    return this.inner.size;
  }

  get base(): number {
    return this.inner.base;
  }

  /** Chains the device holds; heads still waiting to be resubmitted are not held by anyone yet. */
  get inFlight(): number {
    return this.inner.inFlight;
  }

  /**
   * Resubmitted chains first, oldest first, so the device sees requests in the order the driver
   * made them available; their records stay as they were (in flight, same counter).
   */
  pop(): DescriptorChain | null {
    const head = this.record.nextResubmit();
    if (head !== undefined) return this.inner.resubmit(head);
    const chain = this.inner.pop();
    if (chain !== null) this.record.taken(chain.id);
    return chain;
  }

  push(chain: DescriptorChain, written: number): void {
    this.inner.push(chain, written);
    this.record.returned(chain.id);
  }

  publish(): boolean {
    const notify = this.inner.publish();
    this.record.published();
    return notify;
  }

  /** Heads waiting to be resubmitted are work as much as new buffers are: pop again. */
  enableNotifications(): boolean {
    return this.inner.enableNotifications() || this.record.hasPending;
  }

  disableNotifications(): void {
    this.inner.disableNotifications();
  }
}
