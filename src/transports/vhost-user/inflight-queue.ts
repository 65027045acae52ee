/**
 * A ring whose every chain is recorded in the inflight region while the device holds it
 * (inflight.ts), and which first hands out again the chains a crashed predecessor left in flight.
 * The device sees an ordinary DeviceQueue; split and packed rings differ only in their record.
 */
import type { DescriptorChain, DeviceQueue, ResubmittingQueue, RingDescriptor, SavedChain } from '../../virtio/queue.ts';

/** What a split ring's record is given for each chain: its head names it, no copies needed. */
const NO_DESCRIPTORS: readonly RingDescriptor[] = [];

/**
 * One ring's record in the inflight region, in either of vhost-user.rst's layouts. The queue calls
 * it in the order the layouts need for a crash between any two steps to be repairable.
 */
export interface InflightRecord {
  /** The next chain recovery found, to be handed out before any new chain; undefined when none is left. */
  nextResubmit(): SavedChain | undefined;
  readonly hasPending: boolean;
  /** A chain was taken from the ring; `descriptors` are its copies when the ring needs them saved. */
  taken(chain: DescriptorChain, descriptors: readonly RingDescriptor[]): void;
  /** A chain taken from the ring was given back unused (DeviceQueue.unpop): it is no longer in flight. */
  untaken(chain: DescriptorChain): void;
  /** A resubmitted chain was given back unused: it is owed still, and handed out again first. */
  unresubmitted(saved: SavedChain): void;
  /** A chain was returned; it joins the batch the next publish makes visible. */
  returned(chain: DescriptorChain): void;
  /** The batch is about to become visible to the driver. */
  publishing(): void;
  /** The batch is visible to the driver: its chains are no longer in flight. */
  published(): void;
  /**
   * The back-end stopped the ring itself (everything published, or the ring failed and its
   * requests were dropped): nothing is owed, so the next start takes the front-end's position.
   */
  clear(): void;
}

export class InflightQueue implements DeviceQueue {
  /** Resubmitted chains in flight, by the chain handed out: given back, they are owed again, not untaken. */
  private readonly resubmitted = new Map<DescriptorChain, SavedChain>();

  constructor(
    private readonly inner: ResubmittingQueue,
    private readonly record: InflightRecord,
  ) {}

  get size(): number {
    return this.inner.size;
  }

  get base(): number {
    return this.inner.base;
  }

  /** Chains the device holds; chains still waiting to be resubmitted are not held by anyone yet. */
  get inFlight(): number {
    return this.inner.inFlight;
  }

  /**
   * Resubmitted chains first, oldest first, so the device sees requests in the order the driver
   * made them available; their records stay as they were (in flight, same counter).
   */
  pop(): DescriptorChain | null {
    const saved = this.record.nextResubmit();
    if (saved !== undefined) {
      const again = this.inner.resubmit(saved);
      this.resubmitted.set(again, saved);
      return again;
    }
    const chain = this.inner.pop();
    if (chain !== null) this.record.taken(chain, this.inner.savesDescriptors ? this.inner.poppedDescriptors(chain) : NO_DESCRIPTORS);
    return chain;
  }

  push(chain: DescriptorChain, written: number): void {
    this.inner.push(chain, written);
    this.record.returned(chain);
    if (this.resubmitted.size > 0) this.resubmitted.delete(chain);
  }

  unpop(chain: DescriptorChain): void {
    const saved = this.resubmitted.get(chain);
    if (saved === undefined) {
      this.inner.unpop(chain);
      this.record.untaken(chain);
      return;
    }
    this.resubmitted.delete(chain);
    this.inner.unresubmit(chain);
    this.record.unresubmitted(saved);
  }

  publish(): boolean {
    this.record.publishing();
    const notify = this.inner.publish();
    this.record.published();
    return notify;
  }

  /** Chains waiting to be resubmitted are work as much as new buffers are: pop again. */
  enableNotifications(): boolean {
    return this.inner.enableNotifications() || this.record.hasPending;
  }

  disableNotifications(): void {
    this.inner.disableNotifications();
  }
}
