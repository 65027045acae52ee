/** Pieces the framework tests share: a log that can be read back and a scriptable device. */
import { pino } from 'pino';
import type { Logger } from 'pino';
import type { DeviceContext, VirtioDevice } from '../../../src/virtio/device.ts';
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
