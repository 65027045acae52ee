/**
 * The memory balloon's guest driver (§5.5). Pages come from a PageAllocator the embedder chooses
 * (a machine emulator's free list, a test's range of guest RAM): the driver follows the host's
 * target by taking pages from it into the balloon (inflate) and handing them back (deflate), in
 * batches of page frame numbers, and writes how many it holds into `actual`. With STATS_VQ it
 * answers each statistics request with fresh numbers; with PAGE_REPORTING it tells the host of
 * free memory; with DEFLATE_ON_OOM its owner may take pages back before the host asks.
 */
import type { Logger } from 'pino';
import { DeviceId, featureBit, hasFeature } from '../../virtio/constants.ts';
import type { DmaAllocator, DriverTransport } from '../../virtio/driver.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import type { Segment } from '../../virtio/queue.ts';
import {
  BALLOON_CONFIG,
  BALLOON_PAGE_SIZE,
  BalloonFeature,
  type BalloonStat,
  PFN_SIZE,
  balloonQueues,
  encodePfns,
  encodeStats,
} from './wire.ts';

/** Where the balloon's pages come from: free 4 KiB guest pages, by page frame number. */
export interface PageAllocator {
  /** A free page's frame number, now the balloon's, or undefined when none is free. */
  allocate(): number | undefined;
  /** Give a page back. */
  release(pfn: number): void;
}

/** A PageAllocator over `pages` 4 KiB pages of guest RAM from guest-physical `base`. */
export class PageRange implements PageAllocator {
  private readonly free: number[] = [];

  constructor(base: number, pages: number) {
    if (!Number.isSafeInteger(base) || base < 0 || base % BALLOON_PAGE_SIZE !== 0) throw new RangeError(`page range base ${base} is not a 4 KiB-aligned address`);
    if (!Number.isSafeInteger(pages) || pages < 0) throw new RangeError(`page count ${pages} is not a non-negative integer`);
    const first = base / BALLOON_PAGE_SIZE;
    for (let i = pages - 1; i >= 0; i--) this.free.push(first + i);
  }

  get available(): number {
    return this.free.length;
  }

  allocate(): number | undefined {
    return this.free.pop();
  }

  release(pfn: number): void {
    this.free.push(pfn);
  }
}

/** A PageAllocator taking pages from the transport's DMA allocator: the guest memory the driver's owner gave it. */
export class DmaPages implements PageAllocator {
  constructor(private readonly dma: DmaAllocator) {}

  allocate(): number | undefined {
    const addr = this.dma.alloc(BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE);
    return addr === undefined ? undefined : addr / BALLOON_PAGE_SIZE;
  }

  release(pfn: number): void {
    this.dma.free(pfn * BALLOON_PAGE_SIZE);
  }
}

/** Page frame numbers per inflate or deflate buffer (Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX). */
export const PFNS_PER_BATCH = 256;

export interface BalloonDriverOptions {
  /** Where balloon pages come from; default the transport's DMA allocator (DmaPages). */
  readonly pages?: PageAllocator;
  /** The statistics to send when the device asks (§5.5.6.3); without it STATS_VQ is not accepted. */
  readonly stats?: () => readonly BalloonStat[];
  /**
   * The value the guest fills free pages with (§5.5.6.5): PAGE_POISON is accepted and poison_val
   * written, so the device keeps reported pages rather than handing them back zeroed.
   */
  readonly poisonValue?: number;
  /** Features to refuse even when offered (e.g. DEFLATE_ON_OOM). */
  readonly refuse?: bigint;
  readonly log?: Logger;
}

export class BalloonDriver {
  /** Page frame numbers in the balloon, most recent last. */
  private readonly balloon: number[] = [];
  private following: Promise<void> = Promise.resolve();
  private closed = false;
  /** close() has reset the device: the device holds none of the pages now. */
  private reset = false;

  private constructor(
    readonly core: VirtioDriver,
    private readonly pages: PageAllocator,
    private readonly queues: ReturnType<typeof balloonQueues>,
    private readonly stats: (() => readonly BalloonStat[]) | undefined,
  ) {}

  static async open(transport: DriverTransport, options: BalloonDriverOptions = {}): Promise<BalloonDriver> {
    let wanted =
      FRAMEWORK_FEATURES |
      featureBit(BalloonFeature.MUST_TELL_HOST) |
      featureBit(BalloonFeature.DEFLATE_ON_OOM) |
      featureBit(BalloonFeature.PAGE_REPORTING);
    if (options.stats !== undefined) wanted |= featureBit(BalloonFeature.STATS_VQ);
    if (options.poisonValue !== undefined) wanted |= featureBit(BalloonFeature.PAGE_POISON);
    wanted &= ~(options.refuse ?? 0n);
    const offered = await transport.deviceFeatures();
    const queues = balloonQueues(offered & wanted);
    const core = await VirtioDriver.start(transport, {
      name: 'balloon',
      deviceId: DeviceId.BALLOON,
      features: wanted,
      queues: Math.max(...Object.values(queues)) + 1,
      log: options.log,
    });
    const driver = new BalloonDriver(core, options.pages ?? new DmaPages(transport.dma), balloonQueues(core.features), options.stats);
    if (options.poisonValue !== undefined && hasFeature(core.features, BalloonFeature.PAGE_POISON)) {
      const v = new Uint8Array(4);
      new DataView(v.buffer).setUint32(0, options.poisonValue, true);
      await core.writeConfig(BALLOON_CONFIG.offset.poisonVal, v);
    }
    core.onConfigChange(() => driver.follow());
    driver.answerStats();
    driver.follow();
    return driver;
  }

  /** Pages in the balloon. */
  get size(): number {
    return this.balloon.length;
  }

  /** Resolves once the balloon has followed every target change seen so far. */
  settled(): Promise<void> {
    return this.following;
  }

  /**
   * DEFLATE_ON_OOM: the owner needs memory: take up to `pages` pages back from the balloon now,
   * whatever the target. Returns how many came back (0 without the feature).
   */
  async reclaim(pages: number): Promise<number> {
    if (!hasFeature(this.core.features, BalloonFeature.DEFLATE_ON_OOM)) return 0;
    const n = Math.min(pages, this.balloon.length);
    await this.serialised(() => this.deflate(n));
    return n;
  }

  /**
   * §5.5.6.6: tell the device these ranges of guest memory are free (4 KiB-aligned); resolves
   * when it has taken note, after which the pages may be used again.
   */
  async reportFree(ranges: readonly Segment[]): Promise<void> {
    const index = this.queues.reporting;
    if (index === undefined) throw new Error('balloon: the device did not negotiate PAGE_REPORTING');
    // Device-writable, as Linux posts them: the device may discard (write) the pages.
    await this.core.queue(index).submit([], ranges);
  }

  /** Reset the device; the pages it held are the guest's again (§5.5.6.1) and go back to the allocator. */
  async close(): Promise<void> {
    this.closed = true;
    await this.core.close();
    this.reset = true;
    this.giveBack([]);
  }

  /**
   * Pages a failed buffer named, which the device may have taken: the balloon keeps them until
   * the device is reset, then every page in it goes back to the allocator.
   */
  private giveBack(pages: readonly number[]): void {
    this.balloon.push(...pages);
    if (this.reset) for (const pfn of this.balloon.splice(0)) this.pages.release(pfn);
  }

  /** Start (or queue) following the target in num_pages. */
  private follow(): void {
    this.serialised(async () => {
      const target = BALLOON_CONFIG.decode(await this.core.readConfig(0, BALLOON_CONFIG.size)).numPages;
      if (target > this.balloon.length) await this.inflate(target - this.balloon.length);
      else if (target < this.balloon.length) await this.deflate(this.balloon.length - target);
    }).catch((err: unknown) => this.core.log.warn({ err }, 'balloon: following the target failed'));
  }

  /** One balloon change at a time, in order. */
  private serialised(step: () => Promise<void>): Promise<void> {
    const run = this.following.then(step);
    this.following = run.catch(() => undefined);
    return run;
  }

  /** Give up to `n` pages to the balloon; stops early when the allocator has no more. */
  private async inflate(n: number): Promise<void> {
    while (n > 0 && !this.closed) {
      const batch: number[] = [];
      while (batch.length < Math.min(n, PFNS_PER_BATCH)) {
        const pfn = this.pages.allocate();
        if (pfn === undefined) break;
        batch.push(pfn);
      }
      if (batch.length === 0) return;
      // §5.5.6.1: the pages are the device's once the buffer is used; tell it first, then count them.
      try {
        await this.sendPfns(this.queues.inflate!, batch);
      } catch (err) {
        this.giveBack(batch);
        throw err;
      }
      this.balloon.push(...batch);
      n -= batch.length;
      await this.writeActual();
    }
  }

  private async deflate(n: number): Promise<void> {
    while (n > 0 && !this.closed) {
      const batch = this.balloon.splice(this.balloon.length - Math.min(n, PFNS_PER_BATCH));
      // MUST_TELL_HOST (§5.5.6.1): pages are used only after the device has the deflate buffer;
      // this driver always waits, which the spec allows either way.
      try {
        await this.sendPfns(this.queues.deflate!, batch);
      } catch (err) {
        this.giveBack(batch);
        throw err;
      }
      for (const pfn of batch) this.pages.release(pfn);
      n -= batch.length;
      await this.writeActual();
    }
  }

  private async sendPfns(index: number, pfns: readonly number[]): Promise<void> {
    const { dma, memory } = this.core.transport;
    const bytes = encodePfns(pfns);
    const addr = dma.alloc(bytes.length, PFN_SIZE);
    if (addr === undefined) throw new Error(`balloon: DMA memory exhausted allocating ${bytes.length} bytes`);
    try {
      memory.write(addr, bytes);
      await this.core.queue(index).submit([{ addr, len: bytes.length }], []);
    } finally {
      dma.free(addr);
    }
  }

  private async writeActual(): Promise<void> {
    const v = new Uint8Array(4);
    new DataView(v.buffer).setUint32(0, this.balloon.length, true);
    await this.core.writeConfig(BALLOON_CONFIG.offset.actual, v);
  }

  /**
   * §5.5.6.3: post a buffer of statistics at once; the device returns it when it wants new ones,
   * and each return is answered with a fresh buffer.
   */
  private answerStats(): void {
    const index = this.queues.stats;
    const source = this.stats;
    if (index === undefined || source === undefined) return;
    const { dma, memory } = this.core.transport;
    const loop = async (): Promise<void> => {
      while (!this.closed) {
        const bytes = encodeStats(source());
        const addr = dma.alloc(Math.max(bytes.length, 1), 8);
        if (addr === undefined) throw new Error('balloon: DMA memory exhausted allocating the stats buffer');
        try {
          memory.write(addr, bytes);
          await this.core.queue(index).submit([{ addr, len: bytes.length }], []);
        } finally {
          dma.free(addr);
        }
      }
    };
    loop().catch((err: unknown) => {
      if (!this.closed) this.core.log.warn({ err }, 'balloon: the statistics queue stopped');
    });
  }
}
