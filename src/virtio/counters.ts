/**
 * Counters every device keeps through one interface, per queue: what the driver asked for, what
 * the device answered, what went wrong, and how often the driver was interrupted. They belong to
 * the device object and so outlive resets and front-end reconnects; a dashboard, a Prometheus
 * endpoint or a test reads them with snapshot(). Device types add their own (net's drops by
 * reason) through `extra`.
 *
 * Plain numbers: a counter is bumped on the data path and must cost one add. How full each queue
 * is (a gauge, not a counter) costs the data path nothing: snapshot() reads it from the live
 * queues, which keep their in-flight count anyway.
 */

/**
 * Zero every field of a counter object, leaving each one a double. V8 keeps a number field as a
 * small integer until a value no longer fits in 31 bits (a byte count passes 2^30 after a few
 * seconds at line rate); the field then changes representation, which throws away every
 * optimized function that stored to it, on the data path, once per counter as each passes the
 * limit. A field that held a fraction first is a double from the start and stays one.
 */
export function doubleCounters<T extends object>(counters: T): T {
  const fields = counters as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (typeof fields[key] !== 'number') continue;
    fields[key] = 0.5;
    fields[key] = 0;
  }
  return counters;
}

export interface QueueCounters {
  /** Chains the device returned to the driver (used buffers). */
  requests: number;
  /** Device-readable bytes of those chains: what the driver sent. */
  readBytes: number;
  /** Bytes the device wrote into them (the used lengths). */
  writtenBytes: number;
  /** Requests answered with an error status, or whose handler failed. */
  errors: number;
  /** Ring rules the driver broke on this queue (each puts the device in DEVICE_NEEDS_RESET). */
  ringFaults: number;
  /** Used-buffer notifications sent (§2.3.2). */
  notifications: number;
  /** Publishes after which the driver had asked not to be notified (§2.7.10, §2.8.10). */
  suppressed: number;
}

/** How full one queue is at the moment of a snapshot. */
export interface QueueFill {
  /** Chains the device took from the ring and has not returned yet (requests being served, buffers held for later). */
  readonly inFlight: number;
  /** The ring's size as the driver set it; 0 while the queue does not run. */
  readonly size: number;
}

/** The live queues of a device: the transport state that builds and drops them (DeviceState). */
export interface QueueSource {
  liveQueue(index: number): { readonly inFlight: number; readonly size: number } | undefined;
}

const NOT_RUNNING: QueueFill = { inFlight: 0, size: 0 };

export interface CountersSnapshot {
  readonly queues: readonly Readonly<QueueCounters>[];
  /** Per queue, how full it is now. */
  readonly fill: readonly QueueFill[];
  /** The device type's own counters, by name. */
  readonly device: Readonly<Record<string, number>>;
}

function zeroed(): QueueCounters {
  return doubleCounters({ requests: 0, readBytes: 0, writtenBytes: 0, errors: 0, ringFaults: 0, notifications: 0, suppressed: 0 });
}

export class DeviceCounters {
  private readonly perQueue: QueueCounters[];
  /** Counts for an index past the device's queues, so a bad index never throws on the data path. */
  private readonly stray = zeroed();
  private queues: QueueSource | undefined;

  constructor(
    numQueues: number,
    private readonly extra?: () => Readonly<Record<string, number>>,
  ) {
    this.perQueue = Array.from({ length: numQueues }, zeroed);
  }

  queue(index: number): QueueCounters {
    return this.perQueue[index] ?? this.stray;
  }

  /**
   * Where the device's queues live now, read at each snapshot: the transport state that serves
   * the device, the newest one when a front-end reconnects.
   */
  observe(queues: QueueSource): void {
    this.queues = queues;
  }

  snapshot(): CountersSnapshot {
    const fill = this.perQueue.map((_, i): QueueFill => {
      const q = this.queues?.liveQueue(i);
      return q === undefined ? NOT_RUNNING : { inFlight: q.inFlight, size: q.size };
    });
    return { queues: this.perQueue.map((q) => ({ ...q })), fill, device: { ...this.extra?.() } };
  }
}
