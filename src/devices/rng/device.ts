/**
 * The entropy device (§5.4): one queue of device-writable buffers, each filled with random bytes.
 */
import { randomFillSync } from 'node:crypto';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { QueueServer } from '../../virtio/serve.ts';
import type { Request } from '../../virtio/serve.ts';

export interface RngDeviceOptions {
  /** Largest queue size accepted (default 1024, every size a front-end uses). */
  readonly maxQueueSize?: number;
  /**
   * Most bytes filled per request (default 64 KiB): §5.4.6.1 lets the device use less than the
   * whole buffer, and a bound keeps one huge buffer from stalling the event loop.
   */
  readonly maxBytesPerRequest?: number;
}

export class RngDevice implements VirtioDevice {
  readonly deviceId = DeviceId.RNG;
  readonly name = 'rng';
  /** §5.4.2: one queue, requestq. */
  readonly numQueues = 1;
  readonly maxQueueSize: number;
  /** §5.4.3: no device-specific features; every ring feature the framework implements. */
  readonly features = FRAMEWORK_FEATURES;
  /** §5.4.4: no configuration space. */
  readonly config = new Uint8Array(0);
  readonly counters = new DeviceCounters(1);
  private readonly maxBytes: number;
  private server: QueueServer | undefined;

  constructor(options: RngDeviceOptions = {}) {
    this.maxQueueSize = options.maxQueueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    this.maxBytes = options.maxBytesPerRequest ?? 65536;
    if (!Number.isSafeInteger(this.maxBytes) || this.maxBytes < 1) {
      throw new RangeError(`maxBytesPerRequest ${this.maxBytes} is not a positive integer`);
    }
  }

  activate(ctx: DeviceContext): void {
    this.server = new QueueServer(ctx, 0, (req) => this.fill(req));
  }

  queueNotify(index: number): void {
    if (index === 0) this.server?.kick();
  }

  reset(): void {
    this.server = undefined;
  }

  /** §5.4.6.1: place one or more random bytes into the buffer; any readable part is ignored. */
  private fill(req: Request): void {
    for (const seg of req.writer.segments(this.maxBytes)) randomFillSync(seg);
  }
}
