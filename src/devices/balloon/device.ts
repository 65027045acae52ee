/**
 * The memory balloon (§5.5), host half. The host sets a target (num_pages); the driver gives
 * pages to the balloon through the inflate queue and takes them back through the deflate queue,
 * writing how many it holds into `actual`. Pages given up are released on the host at once
 * (GuestMemory.discard: a hole punched in the shared memory file), so the memory really returns
 * to the host; they read as zeros when the guest takes them back.
 *
 * - Statistics (§5.5.6.3): the driver posts one buffer of stats; the device keeps it until it
 *   wants fresh numbers, then returns it and the driver posts a new one. That is a buffer the
 *   device holds and *reads*, not one it fills, so it is served here and not by EventQueue.
 * - Free page reporting (§5.5.6.6): each buffer on reporting_vq *is* free guest memory; its pages
 *   are released and the buffer returned.
 * - Page poison (§5.5.6.5): with a non-zero poison_val the guest expects reported pages to keep
 *   that value, so they are not released (a hole reads as zeros), only counted.
 *
 * Everything from the driver is hostile: page numbers outside guest RAM, pages given twice,
 * buffers of partial page numbers, more pages than the target. None of it can release memory
 * outside guest RAM or count a page twice; each is counted by name.
 */
import { EventEmitter } from 'node:events';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE, featureBit, hasFeature } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import type { DescriptorChain } from '../../virtio/queue.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import { ChainReader } from '../../virtio/chain-io.ts';
import {
  BALLOON_CONFIG,
  BALLOON_DEVICE_FEATURES,
  BALLOON_PAGE_SIZE,
  BalloonFeature,
  PFN_SIZE,
  STAT_SIZE,
  STAT_TAGS,
  balloonQueues,
  decodeStats,
} from './wire.ts';

/** Queues offered: inflateq, deflateq, statsq, reporting_vq (free page hinting is not offered). */
export const BALLOON_QUEUES = 4;

/**
 * Page numbers served from one buffer. Linux sends 256 at a time; a buffer may hold a billion,
 * and serving them would stall the event loop. The rest of such a buffer is counted as ignored.
 */
export const MAX_PFNS_PER_BUFFER = 1 << 20;

/** Statistics read from one buffer: more than every tag known, so a later driver's extra tags fit. */
const MAX_STATS = 64;

export interface BalloonDeviceOptions {
  readonly maxQueueSize?: number;
  /** How often to ask the driver for statistics, in milliseconds; 0 (default) only on request. */
  readonly statsIntervalMs?: number;
  /** Offer free page reporting (default true). */
  readonly reporting?: boolean;
}

/** One statistic as the host keeps it: named, with its unit (§5.5.6.3.1). */
export interface BalloonStatValue {
  readonly value: number;
  readonly unit: 'bytes' | 'events' | 'pages';
}

/** The last statistics the driver sent, by name ('free-memory', ...), and when they arrived. */
export interface BalloonStats {
  readonly receivedAt: number;
  readonly values: Readonly<Record<string, BalloonStatValue>>;
}

export interface BalloonStatus {
  /** The balloon size the host asks for, in bytes (num_pages × 4096). */
  readonly targetBytes: number;
  /** What the driver says the balloon holds, in bytes (actual × 4096). */
  readonly actualBytes: number;
  /** Pages this device released on the host and the guest has not taken back, in bytes. */
  readonly inflatedBytes: number;
  /** Guest RAM the device can see, in bytes; 0 before a driver started it. */
  readonly guestRamBytes: number;
}

/** A target the host cannot set; the message is one sentence. */
export class BalloonTargetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BalloonTargetError';
  }
}

interface Counts {
  /** Pages put in the balloon and released on the host. */
  inflatedPages: number;
  /** Pages taken back by deflate. */
  deflatedPages: number;
  /** Page numbers naming a page outside guest RAM (not released). */
  pfnsOutsideRam: number;
  /** Inflated pages already in the balloon (not counted again). */
  pfnsDuplicate: number;
  /** Deflated pages that were not in the balloon. */
  pfnsNotInflated: number;
  /** Buffers whose length was not a whole number of page numbers (the tail was ignored). */
  partialPfnBuffers: number;
  /** Page numbers past MAX_PFNS_PER_BUFFER in one buffer (not served). */
  pfnsIgnored: number;
  /** Pages inflated while the balloon already held the target (accepted and released). */
  pagesBeyondTarget: number;
  /** Bytes of free memory the driver reported and the host released. */
  reportedBytes: number;
  /** Bytes reported but kept because the guest expects them to hold a poison value. */
  reportedKeptForPoison: number;
  /** Reported ranges that were not whole 4 KiB pages of guest RAM (their partial pages were kept). */
  reportedUnaligned: number;
  /** Statistics buffers received. */
  statsReceived: number;
  /** Statistics of a tag this device does not know (ignored, §5.5.6.3.1). */
  statsUnknownTags: number;
}

export class BalloonDevice
  extends EventEmitter<{ actual: [pages: number]; target: [pages: number]; stats: [stats: BalloonStats]; reported: [bytes: number] }>
  implements VirtioDevice
{
  readonly deviceId = DeviceId.BALLOON;
  readonly name = 'balloon';
  readonly numQueues = BALLOON_QUEUES;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly config = BALLOON_CONFIG.encode({ numPages: 0, actual: 0, freePageHintCmdId: 0, poisonVal: 0 });
  private readonly counts: Counts = {
    inflatedPages: 0,
    deflatedPages: 0,
    pfnsOutsideRam: 0,
    pfnsDuplicate: 0,
    pfnsNotInflated: 0,
    partialPfnBuffers: 0,
    pfnsIgnored: 0,
    pagesBeyondTarget: 0,
    reportedBytes: 0,
    reportedKeptForPoison: 0,
    reportedUnaligned: 0,
    statsReceived: 0,
    statsUnknownTags: 0,
  };
  readonly counters = new DeviceCounters(BALLOON_QUEUES, () => ({ ...this.counts, balloonPages: this.inflated.size }));
  /** Page numbers in the balloon, released on the host: each counted once. */
  private readonly inflated = new Set<number>();
  private ctx: DeviceContext | undefined;
  private queues: ReturnType<typeof balloonQueues> = {};
  private servers = new Map<number, QueueServer>();
  /** The stats buffer the device holds until it wants new statistics (§5.5.6.3). */
  private heldStats: DescriptorChain | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly statsIntervalMs: number;
  private lastStats: BalloonStats | undefined;
  private targetPages = 0;

  constructor(options: BalloonDeviceOptions = {}) {
    super();
    this.maxQueueSize = options.maxQueueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    this.statsIntervalMs = options.statsIntervalMs ?? 0;
    const withheld = options.reporting === false ? featureBit(BalloonFeature.PAGE_REPORTING) : 0n;
    this.features = (FRAMEWORK_FEATURES | BALLOON_DEVICE_FEATURES) & ~withheld;
    if (!Number.isSafeInteger(this.statsIntervalMs) || this.statsIntervalMs < 0) {
      throw new RangeError(`statsIntervalMs ${this.statsIntervalMs} is not a non-negative integer`);
    }
  }

  // --- the host's controls ---

  /**
   * Ask for a balloon of `bytes` (rounded down to whole 4 KiB pages): the driver inflates or
   * deflates to it. Refused when larger than guest RAM, or before a driver runs (guest RAM is not
   * known until then).
   */
  setTarget(bytes: number): void {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new BalloonTargetError(`balloon target ${bytes} is not a non-negative number of bytes.`);
    const ram = this.ctx?.memory.size;
    if (ram === undefined) throw new BalloonTargetError('the balloon target cannot be set before a guest driver has started the device.');
    if (bytes > ram) throw new BalloonTargetError(`balloon target of ${bytes} bytes exceeds the guest's ${ram} bytes of RAM.`);
    const pages = Math.floor(bytes / BALLOON_PAGE_SIZE);
    if (pages === this.targetPages) return;
    this.targetPages = pages;
    BALLOON_CONFIG.set(this.config, 'numPages', pages);
    this.ctx?.configChanged(); // §5.5.6: the driver reacts to a configuration change
    this.emit('target', pages);
  }

  status(): BalloonStatus {
    return {
      targetBytes: this.targetPages * BALLOON_PAGE_SIZE,
      actualBytes: BALLOON_CONFIG.get(this.config, 'actual') * BALLOON_PAGE_SIZE,
      inflatedBytes: this.inflated.size * BALLOON_PAGE_SIZE,
      guestRamBytes: this.ctx?.memory.size ?? 0,
    };
  }

  /** The last statistics the driver sent, or undefined before any arrived. */
  get stats(): BalloonStats | undefined {
    return this.lastStats;
  }

  /**
   * Ask the driver for fresh statistics now: the held buffer goes back (§5.5.6.3). False when the
   * driver has not posted one (no STATS_VQ, or it has not answered the last request yet).
   */
  requestStats(): boolean {
    const index = this.queues.stats;
    const chain = this.heldStats;
    const queue = index === undefined ? undefined : this.ctx?.queue(index);
    this.heldStats = undefined;
    if (chain === undefined || queue === undefined || index === undefined || this.ctx === undefined) return false;
    try {
      queue.push(chain, 0);
      this.ctx.counters.queue(index).requests++;
      if (queue.publish()) {
        this.ctx.counters.queue(index).notifications++;
        this.ctx.notifyQueue(index);
      }
    } catch (err) {
      this.ctx.fail(index, err instanceof Error ? err : new Error(String(err)));
      return false;
    }
    return true;
  }

  // --- VirtioDevice ---

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.queues = balloonQueues(ctx.features);
    const serve = (index: number | undefined, handler: (req: Request) => void): void => {
      if (index !== undefined) this.servers.set(index, new QueueServer(ctx, index, handler));
    };
    serve(this.queues.inflate, (req) => this.inflate(req));
    serve(this.queues.deflate, (req) => this.deflate(req));
    serve(this.queues.reporting, (req) => this.report(req));
    if (this.queues.stats !== undefined && this.statsIntervalMs > 0) {
      this.timer = setInterval(() => this.requestStats(), this.statsIntervalMs);
      this.timer.unref();
    }
    // Linux posts its statistics buffer and kicks while probing, before DRIVER_OK, when a
    // transport does not pass notifications on (§3.1.1): look for it now.
    if (this.queues.stats !== undefined) this.takeStats(this.queues.stats);
  }

  queueNotify(index: number): void {
    if (index === this.queues.stats) this.takeStats(index);
    else this.servers.get(index)?.kick();
  }

  /**
   * The held statistics buffer goes back unused, so the ring can stop (or its memory change): the
   * driver's buffer stays available and is taken again when the queue runs (QEMU gives it back
   * so at reset too).
   */
  queueStopping(index: number): void {
    if (index !== this.queues.stats) return;
    const chain = this.heldStats;
    this.heldStats = undefined;
    if (chain !== undefined) this.ctx?.queue(index)?.unpop(chain);
  }

  configWritten(offset: number, length: number): void {
    // num_pages is the device's (§5.5.4): a driver's write to it does not stick.
    if (BALLOON_CONFIG.touches('numPages', offset, length)) BALLOON_CONFIG.set(this.config, 'numPages', this.targetPages);
    if (BALLOON_CONFIG.touches('actual', offset, length)) this.emit('actual', BALLOON_CONFIG.get(this.config, 'actual'));
  }

  reset(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.ctx = undefined;
    this.servers = new Map();
    this.heldStats = undefined;
    this.queues = {};
    // A new driver starts with an empty balloon; the pages released stay zero until touched.
    this.inflated.clear();
    BALLOON_CONFIG.set(this.config, 'actual', 0);
  }

  // --- queues ---

  /** The page numbers of a request, le32 each (§5.5.6), up to MAX_PFNS_PER_BUFFER. */
  private pfns(req: Request): Uint32Array {
    const whole = Math.floor(req.reader.remaining / PFN_SIZE);
    if (req.reader.remaining % PFN_SIZE !== 0) this.counts.partialPfnBuffers++;
    const n = Math.min(whole, MAX_PFNS_PER_BUFFER);
    this.counts.pfnsIgnored += whole - n;
    const bytes = new Uint8Array(n * PFN_SIZE);
    req.reader.read(bytes);
    const v = new DataView(bytes.buffer);
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = v.getUint32(i * PFN_SIZE, true);
    return out;
  }

  /** §5.5.6.1: the driver gives these pages up; release each on the host, once. */
  private inflate(req: Request): void {
    const memory = this.ctx!.memory;
    const target = this.targetPages;
    // Runs of consecutive pages are released with one call.
    let runStart = -1;
    let runPages = 0;
    const flush = (): void => {
      if (runPages > 0) memory.discard(runStart * BALLOON_PAGE_SIZE, runPages * BALLOON_PAGE_SIZE);
      runPages = 0;
    };
    for (const pfn of this.pfns(req)) {
      const addr = pfn * BALLOON_PAGE_SIZE;
      if (!memory.contains(addr, BALLOON_PAGE_SIZE)) {
        this.counts.pfnsOutsideRam++;
        continue;
      }
      if (this.inflated.has(pfn)) {
        this.counts.pfnsDuplicate++;
        continue;
      }
      if (this.inflated.size >= target) this.counts.pagesBeyondTarget++;
      this.inflated.add(pfn);
      this.counts.inflatedPages++;
      // A run continues only within one region: discard() takes one region's range.
      if (runPages > 0 && pfn === runStart + runPages && memory.contains(runStart * BALLOON_PAGE_SIZE, (runPages + 1) * BALLOON_PAGE_SIZE)) {
        runPages++;
      } else {
        flush();
        runStart = pfn;
        runPages = 1;
      }
    }
    flush();
  }

  /**
   * §5.5.6.1: the driver takes these pages back. Their host memory was released at inflate, so a
   * page reads as zeros on its next touch and is allocated again then; nothing to do but forget it.
   */
  private deflate(req: Request): void {
    for (const pfn of this.pfns(req)) {
      if (this.inflated.delete(pfn)) this.counts.deflatedPages++;
      else this.counts.pfnsNotInflated++;
    }
  }

  /**
   * §5.5.6.6: each buffer is free guest memory the guest does not need now. Drivers post them
   * device-writable (Linux's virtqueue_add_inbuf; QEMU reads in_sg); readable ones are taken too.
   */
  private report(req: Request): void {
    const ctx = this.ctx!;
    const before = this.counts.reportedBytes;
    const poison = hasFeature(ctx.features, BalloonFeature.PAGE_POISON) && BALLOON_CONFIG.get(this.config, 'poisonVal') !== 0;
    for (const seg of [...req.chain.writable, ...req.chain.readable]) {
      const addr = ctx.memory.addressOf(seg);
      if (addr === undefined) continue; // a chain's buffers are always guest memory; see addressOf
      // Only whole 4 KiB pages are released: a partial page may hold live data.
      const start = Math.ceil(addr / BALLOON_PAGE_SIZE) * BALLOON_PAGE_SIZE;
      const end = Math.floor((addr + seg.length) / BALLOON_PAGE_SIZE) * BALLOON_PAGE_SIZE;
      if (start !== addr || end !== addr + seg.length) this.counts.reportedUnaligned++;
      if (end <= start) continue;
      if (poison) {
        this.counts.reportedKeptForPoison += end - start;
        continue;
      }
      ctx.memory.discard(start, end - start);
      this.counts.reportedBytes += end - start;
    }
    this.emit('reported', this.counts.reportedBytes - before);
  }

  /** §5.5.6.3: a stats buffer arrived; read it and hold it until the next request. */
  private takeStats(index: number): void {
    const ctx = this.ctx;
    const queue = ctx?.queue(index);
    if (ctx === undefined || queue === undefined) return;
    try {
      for (let chain = queue.pop(); chain !== null; chain = queue.pop()) {
        // The driver makes one buffer available at a time; an earlier one still held goes back first.
        if (this.heldStats !== undefined) this.requestStats();
        const reader = new ChainReader(chain);
        const bytes = new Uint8Array(Math.min(reader.remaining, MAX_STATS * STAT_SIZE));
        reader.read(bytes);
        ctx.counters.queue(index).readBytes += chain.readableLength;
        this.heldStats = chain;
        this.recordStats(bytes);
      }
    } catch (err) {
      this.heldStats = undefined;
      ctx.fail(index, err instanceof Error ? err : new Error(String(err)));
    }
  }

  private recordStats(bytes: Uint8Array): void {
    const values: Record<string, BalloonStatValue> = {};
    for (const { tag, value } of decodeStats(bytes)) {
      const known = STAT_TAGS[tag];
      if (known === undefined) this.counts.statsUnknownTags++;
      else values[known.name] = { value, unit: known.unit };
    }
    this.counts.statsReceived++;
    this.lastStats = { receivedAt: Date.now(), values };
    this.emit('stats', this.lastStats);
  }
}
