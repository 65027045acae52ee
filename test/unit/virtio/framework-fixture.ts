/**
 * Pieces the framework tests share: a log that can be read back, a scriptable device, and a
 * scripted device queue with a context serving it.
 */
import { pino } from 'pino';
import type { Logger } from 'pino';
import type { DeviceContext, VirtioDevice } from '../../../src/virtio/device.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { DescriptorChain } from '../../../src/virtio/queue.ts';
import type { DeviceQueue } from '../../../src/virtio/queue.ts';
import { QueueServer } from '../../../src/virtio/serve.ts';
import type { Request } from '../../../src/virtio/serve.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';

export interface LogLine {
  level: number;
  msg: string;
  queue?: string;
  rule?: string;
}

/** A pino logger whose lines are kept in `lines` instead of printed. */
export function captureLog(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s) as LogLine) });
  return { log, lines };
}

/** pino's number for "warn". */
export const WARN = 40;

/**
 * A device whose requests are served by `handler` through the framework's QueueServer, and which
 * records what the framework asked of it.
 */
export class ScriptedDevice implements VirtioDevice {
  readonly deviceId = 0x7f;
  readonly name = 'test';
  readonly config: Uint8Array;
  readonly counters: DeviceCounters;
  ctx: DeviceContext | undefined;
  activations = 0;
  resets = 0;
  private servers: QueueServer[] = [];

  constructor(
    readonly handler: (req: Request, queue: number) => void | Promise<void> = () => {},
    readonly numQueues = 2,
    readonly maxQueueSize = 16,
    readonly features = 0n,
    configBytes = 8,
  ) {
    this.config = new Uint8Array(configBytes);
    this.counters = new DeviceCounters(numQueues);
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.activations++;
    this.servers = Array.from({ length: this.numQueues }, (_, i) => new QueueServer(ctx, i, (req) => this.handler(req, i)));
  }

  queueNotify(index: number): void {
    this.servers[index]?.kick();
  }

  reset(): void {
    this.resets++;
    this.ctx = undefined;
    this.servers = [];
  }
}

/** A promise with its resolve function, for handlers the test finishes by hand. */
export function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = (): void => {};
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** A device queue over a script of chains, recording what the server does with it. */
export class ScriptQueue implements DeviceQueue {
  readonly size = 16;
  readonly base = 0;
  readonly calls: string[] = [];
  readonly used: [number, number][] = [];
  notificationsOn = true;
  /** What publish() answers: did the driver ask to be notified. */
  driverWantsNotify = true;
  /** Chains that "arrive" while notifications are being re-enabled (the §2.7.10 race). */
  lateArrivals: DescriptorChain[] = [];
  inFlight = 0;

  constructor(public available: DescriptorChain[]) {}

  pop(): DescriptorChain | null {
    this.calls.push('pop');
    const c = this.available.shift() ?? null;
    if (c !== null) this.inFlight++;
    return c;
  }

  push(chain: DescriptorChain, written: number): void {
    this.calls.push(`push ${chain.id}`);
    this.used.push([chain.id, written]);
    this.inFlight--;
  }

  unpop(chain: DescriptorChain): void {
    this.calls.push(`unpop ${chain.id}`);
    this.available.unshift(chain);
    this.inFlight--;
  }

  publish(): boolean {
    this.calls.push('publish');
    return this.driverWantsNotify;
  }

  enableNotifications(): boolean {
    this.calls.push('enable');
    this.notificationsOn = true;
    const late = this.lateArrivals.splice(0);
    this.available.push(...late);
    return late.length > 0;
  }

  disableNotifications(): void {
    this.calls.push('disable');
    this.notificationsOn = false;
  }
}

export function chain(id: number, writable = 4): DescriptorChain {
  return new DescriptorChain(id, 1, [], [new Uint8Array(writable)], 0, writable);
}

/** A context serving `queue` as queue 0 until `live` is cleared (as a reset does), polling for `pollMicros`. */
export function context(queue: DeviceQueue, features = 0n, pollMicros?: number) {
  const notified: number[] = [];
  const failed: Error[] = [];
  const { log, lines } = captureLog();
  const ctl = { live: true };
  const ctx: DeviceContext = {
    memory: GuestMemory.allocate(16),
    features,
    queue: (i) => (ctl.live && i === 0 ? queue : undefined),
    notifyQueue: (i) => notified.push(i),
    configChanged: () => {},
    fail: (_i, err) => {
      failed.push(err);
      ctl.live = false;
    },
    log,
    counters: new DeviceCounters(1),
    pollMicros,
  };
  return { ctx, notified, failed, lines, ctl };
}
