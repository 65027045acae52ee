/** The guest driver of the entropy device (§5.4): random bytes on request. */
import type { Logger } from 'pino';
import { DeviceId, Feature, featureBit } from '../../virtio/constants.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import type { RequestQueue } from '../../virtio/request-queue.ts';

export interface RngDriverOptions {
  /** Use a packed ring when the device offers one (default true). */
  readonly packed?: boolean;
  readonly queueSize?: number;
  /** Largest single buffer handed to the device (default 4096 bytes). */
  readonly chunkBytes?: number;
  readonly log?: Logger;
}

export class RngDriver {
  private constructor(
    readonly core: VirtioDriver,
    private readonly requestq: RequestQueue,
    private readonly chunk: number,
  ) {}

  static async open(transport: DriverTransport, options: RngDriverOptions = {}): Promise<RngDriver> {
    const chunk = options.chunkBytes ?? 4096;
    if (!Number.isSafeInteger(chunk) || chunk < 1) throw new RangeError(`chunkBytes ${chunk} is not a positive integer`);
    const features = options.packed === false ? FRAMEWORK_FEATURES & ~featureBit(Feature.RING_PACKED) : FRAMEWORK_FEATURES;
    const core = await VirtioDriver.start(transport, {
      name: 'rng',
      deviceId: DeviceId.RNG,
      features,
      queues: 1,
      queueSize: options.queueSize,
      log: options.log,
    });
    return new RngDriver(core, core.queue(0), chunk);
  }

  /** `n` random bytes from the device, requested in chunks that may be in flight together. */
  async read(n: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`read length ${n} is not a non-negative integer`);
    const out = new Uint8Array(n);
    const parts: Promise<void>[] = [];
    for (let at = 0; at < n; at += this.chunk) {
      const part = out.subarray(at, Math.min(n, at + this.chunk));
      parts.push(this.fill(part));
    }
    await Promise.all(parts);
    return out;
  }

  /** Fill `dst` with as many requests as the device needs (it may return fewer bytes than asked). */
  private async fill(dst: Uint8Array): Promise<void> {
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(dst.length, 1);
    if (addr === undefined) throw new Error(`rng: DMA memory exhausted allocating ${dst.length} bytes`);
    try {
      for (let at = 0; at < dst.length; ) {
        const want = dst.length - at;
        const len = await this.requestq.submit([], [{ addr, len: want }]);
        // §5.4.6.1: the device places one or more bytes; none would leave this loop spinning.
        if (len === 0) throw new Error('rng: the device returned a buffer with no random bytes');
        dst.set(memory.slice(addr, len), at);
        at += len;
      }
    } finally {
      dma.free(addr);
    }
  }

  async close(): Promise<void> {
    await this.core.close();
  }
}
