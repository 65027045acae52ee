/**
 * A queue of device-writable buffers the driver posts ahead of time and the device fills when
 * something happens: a frame arrives (net receiveq, §5.1.6.4), console output (§5.3.6), an input
 * event (§5.8.6), a SCSI event (§5.6.6.3). The device offers events; the queue writes each into
 * the next posted buffer(s) and returns them used.
 *
 * - Buffers are popped when an event needs them and held until it can be written whole, so an
 *   event is never half-written and a popped buffer is never returned used out of turn (which
 *   VIRTIO_F_IN_ORDER would forbid, §2.7.9 / §2.8.20). Held buffers are used oldest first.
 * - When the transport stops the queue it waits for every popped buffer, so the device calls
 *   queueStopping() from VirtioDevice.queueStopping: held buffers go back to the ring unused, as
 *   if never popped (DeviceQueue.unpop), and the events wait for the queue to run again.
 * - An EventLayout says how many held buffers an event takes and writes it: one buffer for a
 *   fixed-size event, several for a frame spread over merged buffers, or as much of a byte stream
 *   as the next buffer holds, the rest waiting for the buffer after.
 * - Events that find no buffer wait in a backlog of bounded length. When it is full, offer()
 *   refuses: with `overflow: 'drop'` the event is counted as dropped (spec-allowed for net);
 *   with `overflow: 'refuse'` the producer keeps it and is called back (`onSpace`) once the
 *   backlog has room again, so a stream loses nothing.
 * - Used buffers are published once per drain and the driver is notified only when publish()
 *   says it asked to be (§2.7.10 / §2.8.10). With `burst`, the events offered in one synchronous
 *   run (the frames a switch forwards from another queue's drain) share one publish, made in a
 *   microtask after the last of them, and so at most one notification. Notifications are turned on only while an event
 *   waits for buffers, re-checking for buffers that slipped in before they were visible (the race
 *   of §2.7.10); otherwise the driver posts without kicking and the next event pops.
 * - A ring fault fails the queue through DeviceContext.fail. Once the queue is gone (failed or
 *   reset) the held buffers are forgotten, never pushed, and the backlog is emptied.
 *
 * A device makes one per event queue in activate() and drops it in reset(), as with QueueServer:
 *
 *     this.events = new EventQueue(ctx, 0, { layout: ONE_PER_BUFFER, backlog: 64, overflow: 'drop' });
 *     queueNotify(i) { if (i === 0) this.events?.kick(); }
 *     this.events?.offer(encodeEvent(type, code, value));   // whenever something happens
 */
import { ChainWriter } from './chain-io.ts';
import type { QueueCounters } from './counters.ts';
import type { DeviceContext } from './device.ts';
import { type DescriptorChain, type DeviceQueue, VirtqueueError } from './queue.ts';

/** What an EventLayout sees of the held buffers; there is always at least one. */
export interface HeldBuffers {
  /** Buffers held, oldest first. */
  readonly count: number;
  /** Their writable bytes in total. */
  readonly bytes: number;
  /** Writable bytes of held buffer `i` (0 is the oldest). */
  writable(i: number): number;
}

/**
 * How many held buffers an event takes: a count from 1 to `held.count`, 'more' when it needs
 * buffers beyond those held (the queue pops another, or waits for the driver), or 'never' when
 * it cannot be written into what the driver posts (the event is dropped as 'tooLarge').
 */
export type Fit = number | 'more' | 'never';

/** How one kind of event goes into buffers. */
export interface EventLayout<E> {
  fit(event: E, held: HeldBuffers): Fit;
  /**
   * The writers are the queue's and serve the next event after the call: keep none of them.
   * Write `event` into the buffers fit() chose (their writers, oldest first); `writer.written`
   * becomes each used length. Returns what is left of the event to write into later buffers
   * (a byte stream split across buffers), or undefined when it was written whole.
   */
  write(event: E, writers: readonly ChainWriter[]): E | undefined;
}

/** Why an offered event was dropped: no room in the backlog, or larger than any buffer the driver posts. */
export type EventDropReason = 'noBuffer' | 'tooLarge';

export interface EventQueueOptions<E> {
  readonly layout: EventLayout<E>;
  /** Events kept waiting for buffers (at least 1). */
  readonly backlog: number;
  /**
   * A full backlog: 'drop' counts the event as dropped ('noBuffer'); 'refuse' leaves it with the
   * producer (offer() returns false) and calls onSpace once there is room again.
   */
  readonly overflow: 'drop' | 'refuse';
  /**
   * A buffer with fewer writable bytes breaks the driver's side of the contract and fails the
   * queue, `rule` naming it in the one log line (e.g. §5.1.6.3.1: a receive buffer holds at least
   * virtio_net_hdr). Default: a buffer of no writable bytes, 'event buffer not writable'.
   */
  readonly minBuffer?: { readonly bytes: number; readonly rule: string };
  /** Called for each dropped event, e.g. to count it under the device's own names. */
  readonly onDrop?: (event: E, reason: EventDropReason) => void;
  /** With overflow 'refuse': the backlog has room again after offer() returned false. */
  readonly onSpace?: () => void;
  /**
   * Offers come in bursts (frames forwarded from a transmit queue's drain): what one synchronous
   * run of offers writes is published once, in a microtask, instead of once per offer. A kick
   * still publishes at once.
   */
  readonly burst?: boolean;
  /**
   * For events that are only lent to offer() (a net frame in a driver's transmit buffer): a copy
   * the queue can keep, made only when the event has to wait in the backlog. Without it, events
   * are kept as offered.
   */
  readonly retain?: (event: E) => E;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

export class EventQueue<E> implements HeldBuffers {
  /** Buffers popped and not yet used, oldest first, all from `heldFrom`. */
  private held: DescriptorChain[] = [];
  private heldBytes = 0;
  private heldFrom: DeviceQueue | undefined;
  /** Events waiting for buffers, oldest first; short (bounded by the backlog option), so shift() is cheap. */
  private readonly backlog: E[] = [];
  /** Events taken off the front of the backlog (written or dropped), ever: offer() finds its event by it. */
  private served = 0;
  private readonly layout: EventLayout<E>;
  private readonly limit: number;
  private readonly minBuffer: { readonly bytes: number; readonly rule: string };
  private draining = false;
  /** offer() refused an event and onSpace has not been called since. */
  private refused = false;
  private readonly dropCounts: Record<EventDropReason, number> = { noBuffer: 0, tooLarge: 0 };
  private readonly counters: QueueCounters;
  /** The writer of an event that takes one buffer, the common case, reused from event to event. */
  private readonly oneWriter = [new ChainWriter()];
  /** With `burst`: the queue whose used buffers wait for the microtask that publishes them. */
  private unpublished: DeviceQueue | undefined;
  private readonly publishTurn = (): void => {
    const queue = this.unpublished;
    this.unpublished = undefined;
    if (queue !== undefined && queue === this.ctx.queue(this.index)) this.publish(queue);
  };

  constructor(
    private readonly ctx: DeviceContext,
    readonly index: number,
    private readonly options: EventQueueOptions<E>,
  ) {
    this.layout = options.layout;
    this.limit = options.backlog;
    this.minBuffer = options.minBuffer ?? { bytes: 1, rule: 'event buffer not writable' };
    this.counters = ctx.counters.queue(index);
    if (!Number.isSafeInteger(this.limit) || this.limit < 1) throw new RangeError(`event queue ${index}: backlog ${this.limit} is not a positive integer`);
  }

  /** Events waiting for the driver to post buffers. */
  get waiting(): number {
    return this.backlog.length;
  }

  /** Events dropped, by reason. */
  get dropped(): Readonly<Record<EventDropReason, number>> {
    return this.dropCounts;
  }

  /**
   * Queue an event and write what the posted buffers take now. False when the backlog is full:
   * the event was dropped (overflow 'drop') or is still the caller's (overflow 'refuse').
   */
  offer(event: E): boolean {
    if (this.backlog.length >= this.limit) {
      if (this.options.overflow === 'refuse') {
        this.refused = true;
        return false;
      }
      this.drop(event, 'noBuffer');
      return false;
    }
    const at = this.backlog.length;
    const servedBefore = this.served;
    this.backlog.push(event);
    this.drain(this.options.burst === true);
    // What is left of this event (all of it, or the rest of a stream) now sits `served` places
    // nearer the front; events from before it that still wait were retained when offered.
    const retain = this.options.retain;
    const left = at - (this.served - servedBefore);
    if (retain !== undefined && left >= 0 && left < this.backlog.length) this.backlog[left] = retain(this.backlog[left]);
    return true;
  }

  /**
   * Take back waiting events `obsolete` picks, before any of them is written: a device that must
   * stop serving an event (virtio-rtc: the driver disabled the alarm it was for) calls this
   * before it answers. For layouts that write each event whole; returns how many were removed.
   */
  withdraw(obsolete: (event: E) => boolean): number {
    const before = this.backlog.length;
    const kept = this.backlog.filter((e) => !obsolete(e));
    this.backlog.length = 0;
    this.backlog.push(...kept);
    const removed = before - kept.length;
    if (removed > 0) this.spaceFreed();
    return removed;
  }

  /**
   * The queue is about to stop, or to pause for a memory change (VirtioDevice.queueStopping), and
   * the transport waits for every chain popped from it: give the held buffers back unused, newest
   * first, so they are available again from the ring's position. Waiting events stay; a pause
   * ends with a kick, which pops the buffers again.
   */
  queueStopping(): void {
    const queue = this.heldFrom;
    // Buffers of a queue the context no longer serves are forgotten by the next drain instead.
    if (queue === undefined || queue !== this.ctx.queue(this.index)) return;
    // What a burst wrote goes to the driver before the ring stops.
    if (this.unpublished === queue) this.publishTurn();
    try {
      for (let chain = this.held.pop(); chain !== undefined; chain = this.held.pop()) queue.unpop(chain);
    } finally {
      this.held = [];
      this.heldBytes = 0;
    }
  }

  /** The driver posted buffers (a kick on this queue); call from VirtioDevice.queueNotify. */
  kick(): void {
    this.drain(false);
  }

  // HeldBuffers, as layouts see them.
  get count(): number {
    return this.held.length;
  }

  get bytes(): number {
    return this.heldBytes;
  }

  writable(i: number): number {
    return this.held[i].writableLength;
  }

  /** Write what the held and posted buffers take; publish at once, or with `deferPublish` at the end of the burst. */
  private drain(deferPublish: boolean): void {
    if (this.draining) return; // an offer from inside the loop (onDrop, say): the loop takes it
    const queue = this.ctx.queue(this.index);
    if (queue !== this.heldFrom) this.queueGone(queue);
    if (queue === undefined) {
      this.spaceFreed();
      return;
    }
    this.draining = true;
    let pushed = 0;
    try {
      while (this.backlog.length > 0) {
        const fit = this.gather(queue, this.backlog[0]);
        if (fit === 'wait') break;
        if (fit === 'never') {
          this.served++;
          this.drop(this.backlog.shift()!, 'tooLarge');
          continue;
        }
        pushed += this.place(queue, fit);
      }
      if (pushed > 0 && deferPublish) this.publishLater(queue);
      else if (pushed > 0 || this.unpublished === queue) {
        this.unpublished = undefined;
        this.publish(queue);
      }
    } catch (err) {
      // A ring fault: the queue is dead until reset, and nothing held can be returned.
      this.queueGone(undefined);
      this.ctx.fail(this.index, asError(err));
    } finally {
      this.draining = false;
    }
    this.spaceFreed();
  }

  /**
   * Pop until the layout can place `event` in the held buffers: their count, 'wait' when the
   * driver has no more buffers now (notifications are on, its next kick resumes), or 'never'.
   */
  private gather(queue: DeviceQueue, event: E): number | 'wait' | 'never' {
    for (;;) {
      if (this.held.length > 0) {
        const fit = this.layout.fit(event, this);
        if (fit === 'never') return 'never';
        if (fit !== 'more') {
          if (!Number.isInteger(fit) || fit < 1 || fit > this.held.length) throw new RangeError(`event layout chose ${fit} of ${this.held.length} held buffers`);
          return fit;
        }
        // The driver cannot make more than a ring of buffers available at once.
        if (this.held.length >= queue.size) return 'never';
      }
      const chain = queue.pop();
      if (chain === null) {
        // §2.7.10: buffers made available before notifications were re-enabled are popped now.
        if (queue.enableNotifications()) continue;
        return 'wait';
      }
      queue.disableNotifications();
      // Returning a too-small buffer unused would overtake the held ones, which IN_ORDER forbids.
      if (chain.writableLength < this.minBuffer.bytes) {
        throw new VirtqueueError(this.minBuffer.rule, `${chain.writableLength} writable bytes, fewer than the ${this.minBuffer.bytes} the device needs`);
      }
      this.held.push(chain);
      this.heldBytes += chain.writableLength;
    }
  }

  /** Write the oldest event into the first `count` held buffers and push them; returns `count`. */
  private place(queue: DeviceQueue, count: number): number {
    const held = this.held;
    const writers = count === 1 ? this.oneWriter : Array.from({ length: count }, () => new ChainWriter());
    for (let i = 0; i < count; i++) writers[i].reset(held[i]);
    const rest = this.layout.write(this.backlog[0], writers);
    if (rest === undefined) {
      this.backlog.shift();
      this.served++;
    }
    else this.backlog[0] = rest;
    const counts = this.counters;
    for (let i = 0; i < count; i++) {
      const chain = held.shift()!;
      const written = writers[i].written;
      this.heldBytes -= chain.writableLength;
      counts.readBytes += chain.readableLength;
      // Pushed, the chain is the queue's again (DeviceQueue.pop): nothing of it is read after.
      queue.push(chain, written);
      counts.requests++;
      counts.writtenBytes += written;
    }
    return count;
  }

  /** Publish `queue` in a microtask, once for all the offers of this synchronous run. */
  private publishLater(queue: DeviceQueue): void {
    if (this.unpublished === queue) return;
    // Used buffers of a queue that is no longer served are never published.
    this.unpublished = queue;
    queueMicrotask(this.publishTurn);
  }

  private publish(queue: DeviceQueue): void {
    if (queue.publish()) {
      this.counters.notifications++;
      this.ctx.notifyQueue(this.index);
    } else {
      this.counters.suppressed++;
    }
  }

  private drop(event: E, reason: EventDropReason): void {
    this.dropCounts[reason]++;
    this.options.onDrop?.(event, reason);
  }

  /**
   * The queue buffers were held from is no longer the context's (reset or failed): its buffers
   * must not be pushed, and events offered for it go nowhere.
   */
  private queueGone(now: DeviceQueue | undefined): void {
    if (this.heldFrom !== undefined) this.backlog.length = 0;
    this.unpublished = undefined;
    this.held = [];
    this.heldBytes = 0;
    this.heldFrom = now;
  }

  private spaceFreed(): void {
    if (!this.refused || this.backlog.length >= this.limit) return;
    this.refused = false;
    this.options.onSpace?.();
  }
}

/**
 * A byte stream (console output, §5.3.6): each buffer takes as much as it holds and the rest of
 * a chunk goes into the next, so a stream is never cut short. Offer non-empty chunks.
 */
export const BYTE_STREAM: EventLayout<Uint8Array> = {
  fit: () => 1,
  write(bytes, writers) {
    const n = writers[0].write(bytes);
    return n < bytes.length ? bytes.subarray(n) : undefined;
  },
};

/**
 * Whole records, one per buffer (virtio-input's 8-byte events, §5.8.6; virtio-scsi's event
 * records, §5.6.6.3). A record longer than the next buffer cannot be placed and is dropped;
 * set `minBuffer` to the record size to treat such a buffer as the driver's fault instead.
 */
export const ONE_PER_BUFFER: EventLayout<Uint8Array> = {
  fit: (record, held) => (held.writable(0) >= record.length ? 1 : 'never'),
  write(record, writers) {
    writers[0].write(record);
    return undefined;
  },
};
