/**
 * The virtio-blk driver (§5.2): a typed, promise-based disk API over any DriverTransport. Each
 * call becomes one or more requests (§5.2.6) in guest memory the driver allocates; many may be in
 * flight at once, spread over the request queues, bounded by ring room and DMA memory.
 *
 * The device is not trusted: a status byte it never wrote or an unknown status is an error, and
 * sizes it announces are checked before use.
 */
import type { Logger } from 'pino';
import { DeviceId, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import { DEFAULT_MAX_REQUEST_QUEUES, VirtioDriver } from '../../virtio/driver-core.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import type { RequestQueue } from '../../virtio/request-queue.ts';
import { type BlkIo, type BlkRequest, RequestPool, STATUS_UNWRITTEN } from './driver-request.ts';
import {
  BlkFeature,
  BlkStatus,
  type BlkConfig,
  BLK_CONFIG,
  ID_SIZE,
  REQUEST_HEADER_SIZE,
  RangeFlag,
  RequestType,
  SECTOR_SIZE,
  STATUS_SIZE,
  encodeRangeSegments,
} from './wire.ts';

export type { BlkIo } from './driver-request.ts';

/** Every virtio-blk feature this driver implements, and the ring features it can use. */
export const BLK_DRIVER_FEATURES: bigint = [
  BlkFeature.SIZE_MAX,
  BlkFeature.SEG_MAX,
  BlkFeature.GEOMETRY,
  BlkFeature.RO,
  BlkFeature.BLK_SIZE,
  BlkFeature.FLUSH,
  BlkFeature.TOPOLOGY,
  BlkFeature.CONFIG_WCE,
  BlkFeature.MQ,
  BlkFeature.DISCARD,
  BlkFeature.WRITE_ZEROES,
  Feature.RING_PACKED,
  Feature.EVENT_IDX,
  Feature.INDIRECT_DESC,
  Feature.IN_ORDER,
].reduce((acc, bit) => acc | featureBit(bit), 0n);

export interface BlkDriverOptions {
  /** Features to accept when offered (default BLK_DRIVER_FEATURES). */
  readonly features?: bigint;
  /** Use a packed ring when the device offers one (default true); false forces split rings. */
  readonly packed?: boolean;
  /**
   * Request queues to use, at most what the device has (default: what it has, up to
   * DEFAULT_MAX_REQUEST_QUEUES).
   */
  readonly queues?: number;
  /** Largest queue size (default 256). */
  readonly queueSize?: number;
  /** Largest data transfer per request in bytes (default 1 MiB); larger calls are split. */
  readonly maxTransfer?: number;
  /**
   * Microseconds each request queue keeps polling for completions after one before it sleeps on
   * the device's notification (default 0: never poll; request-queue.ts).
   */
  readonly pollMicros?: number;
  readonly log?: Logger;
}

/** The device answered a request with IOERR or UNSUPP, or with no valid status at all. */
export class BlkRequestError extends Error {
  constructor(
    /** What was asked, e.g. "read of 8 sectors at sector 100". */
    readonly request: string,
    /** The status byte (BlkStatus), or undefined when the device wrote none we recognise. */
    readonly status: number | undefined,
    detail: string,
  ) {
    super(`blk: ${request} failed: ${detail}`);
    this.name = 'BlkRequestError';
  }
}

const STATUS_NAMES: Readonly<Record<number, string>> = {
  [BlkStatus.IOERR]: 'IOERR (device or driver error)',
  [BlkStatus.UNSUPP]: 'UNSUPP (the device does not support this request)',
};

const DEFAULT_MAX_TRANSFER = 1024 * 1024;
const EMPTY = new Uint8Array(0);

function sectorsText(n: number): string {
  return n === 1 ? '1 sector' : `${n} sectors`;
}

export class BlkDriver {
  private cfg: BlkConfig;
  private readonly requests: RequestPool;
  /** Completion of every request started with start(): one function, not one per request. */
  private readonly ioDone = (req: BlkRequest): void => {
    const io = req.io!;
    req.io = undefined;
    const err = this.outcome(req, undefined);
    if (err === undefined && !io.write) io.buffer.set(req.inData);
    io.done(err);
  };
  private nextQueue = 0;

  private constructor(
    readonly core: VirtioDriver,
    cfg: BlkConfig,
    private readonly queueCount: number,
    /** Largest data bytes per request. */
    private readonly maxTransfer: number,
    /** Largest data bytes per segment (size_max), Infinity when unbounded. */
    private readonly maxSegment: number,
  ) {
    this.cfg = cfg;
    this.requests = new RequestPool(core.transport.dma, core.transport.memory);
  }

  /** Initialize the block device behind `transport` (§3.1.1, §5.2.5) and return the driver. */
  static async open(transport: DriverTransport, options: BlkDriverOptions = {}): Promise<BlkDriver> {
    const asked = options.queues;
    if (asked !== undefined && (!Number.isSafeInteger(asked) || asked < 1)) throw new RangeError(`blk: option queues ${asked} is not a positive integer`);
    const core = await VirtioDriver.start(transport, {
      name: 'blk',
      deviceId: DeviceId.BLOCK,
      features: (options.features ?? BLK_DRIVER_FEATURES) & ~(options.packed === false ? featureBit(Feature.RING_PACKED) : 0n),
      queues: async (plan) => {
        // §5.2.2: without MQ only requestq1 exists; with it num_queues says how many. requestq1
        // always exists, so a num_queues of 0 reads as 1. The device's word only bounds what
        // the driver wants, never raises it: one ring each, not one per queue claimed.
        let offered = 1;
        if (hasFeature(plan.features, BlkFeature.MQ)) {
          const raw = await plan.readConfig(BLK_CONFIG.offset.numQueues, 2);
          offered = Math.max(1, raw[0] | (raw[1] << 8));
        }
        return Math.min(asked ?? DEFAULT_MAX_REQUEST_QUEUES, offered, Math.max(1, await plan.deviceQueues()));
      },
      queueSize: options.queueSize,
      pollMicros: options.pollMicros,
      log: options.log,
    });
    try {
      const cfg = BLK_CONFIG.decode(await core.readConfig(0, BLK_CONFIG.size));
      const has = (bit: number): boolean => hasFeature(core.features, bit);
      const sizeMax = has(BlkFeature.SIZE_MAX) && cfg.sizeMax > 0 ? cfg.sizeMax : Infinity;
      // Data descriptors per request: seg_max when announced, and never more than a ring holds
      // besides the header and status descriptors.
      const ringRoom = core.queue(0).size - 2;
      if (ringRoom < 1) throw new Error(`blk: a queue of size ${core.queue(0).size} cannot hold a request`);
      const segments = Math.min(has(BlkFeature.SEG_MAX) && cfg.segMax > 0 ? cfg.segMax : ringRoom, ringRoom);
      const wanted = options.maxTransfer ?? DEFAULT_MAX_TRANSFER;
      if (!Number.isSafeInteger(wanted) || wanted < SECTOR_SIZE) {
        throw new RangeError(`blk: maxTransfer ${wanted} is not an integer of at least ${SECTOR_SIZE}`);
      }
      // Whole sectors per request, within seg_max × size_max.
      const limit = Math.min(wanted, segments * sizeMax);
      const maxTransfer = Math.floor(limit / SECTOR_SIZE) * SECTOR_SIZE;
      if (maxTransfer < SECTOR_SIZE) throw new Error(`blk: the device's seg_max × size_max (${limit} bytes) is less than a sector`);
      const driver = new BlkDriver(core, cfg, core.queueCount, maxTransfer, sizeMax);
      // A device whose generation never settles fails the read; the last configuration stays.
      core.onConfigChange(() => {
        driver.refreshConfig().catch((err: unknown) => core.log.warn({ err }, 'blk: re-reading the configuration failed'));
      });
      return driver;
    } catch (err) {
      await core.close();
      throw err;
    }
  }

  /** The negotiated features. */
  get features(): bigint {
    return this.core.features;
  }

  /** Disk size in 512-byte sectors; refreshed on a configuration change (§5.2.6.1). */
  get capacity(): number {
    return this.cfg.capacity;
  }

  get readOnly(): boolean {
    return hasFeature(this.features, BlkFeature.RO);
  }

  /** The configuration space as last read. */
  get config(): BlkConfig {
    return this.cfg;
  }

  /** Largest data bytes of one request: the most a start() may move. */
  get transferLimit(): number {
    return this.maxTransfer;
  }

  /** Request queues in use. */
  get queues(): number {
    return this.queueCount;
  }

  /** Read `length` bytes (or fill `buffer`) from `sector` on; the length is a multiple of 512. */
  async read(sector: number, lengthOrBuffer: number | Uint8Array): Promise<Uint8Array> {
    const out = typeof lengthOrBuffer === 'number' ? new Uint8Array(lengthOrBuffer) : lengthOrBuffer;
    this.checkRange('read', sector, out.length);
    await this.chunked(sector, out.length, (s, at, len) =>
      this.submit(RequestType.IN, s, EMPTY, len, undefined, (dma) => out.set(dma, at)),
    );
    return out;
  }

  /** Write `data` (a multiple of 512 bytes) from `sector` on. */
  async write(sector: number, data: Uint8Array): Promise<void> {
    this.checkRange('write', sector, data.length);
    await this.chunked(sector, data.length, (s, at, len) =>
      this.submit(RequestType.OUT, s, data.subarray(at, at + len), 0),
    );
  }

  /** Make every completed write durable (VIRTIO_BLK_T_FLUSH). */
  async flush(): Promise<void> {
    await this.submit(RequestType.FLUSH, 0, EMPTY, 0, 'flush');
  }

  /** Discard `count` sectors from `sector` (VIRTIO_BLK_T_DISCARD); their contents become unspecified. */
  async discard(sector: number, count: number): Promise<void> {
    await this.ranges(RequestType.DISCARD, 'discard', sector, count, 0);
  }

  /** Make `count` sectors from `sector` read as zeroes; `unmap` lets the device deallocate them. */
  async writeZeroes(sector: number, count: number, unmap = false): Promise<void> {
    await this.ranges(RequestType.WRITE_ZEROES, 'write zeroes', sector, count, unmap ? RangeFlag.UNMAP : 0);
  }

  /** The device ID string (VIRTIO_BLK_T_GET_ID), without its NUL padding. */
  async getId(): Promise<string> {
    let id = new Uint8Array(0);
    await this.submit(RequestType.GET_ID, 0, EMPTY, ID_SIZE, 'get id', (dma) => (id = dma.slice()));
    const end = id.indexOf(0);
    return new TextDecoder('latin1').decode(end < 0 ? id : id.subarray(0, end));
  }

  /** Switch the cache between writeback and writethrough (needs VIRTIO_BLK_F_CONFIG_WCE, §5.2.5). */
  async setWriteback(writeback: boolean): Promise<void> {
    if (!hasFeature(this.features, BlkFeature.CONFIG_WCE)) {
      throw new Error('blk: the cache mode cannot be changed: VIRTIO_BLK_F_CONFIG_WCE was not negotiated');
    }
    await this.core.writeConfig(BLK_CONFIG.offset.writeback, Uint8Array.of(writeback ? 1 : 0));
    await this.refreshConfig();
  }

  /** Reset the device and give back its memory; pending requests fail. */
  async close(): Promise<void> {
    await this.core.close();
    this.requests.release();
  }

  private async refreshConfig(): Promise<void> {
    this.cfg = BLK_CONFIG.decode(await this.core.readConfig(0, BLK_CONFIG.size));
  }

  /** §5.2.6.1: a driver MUST NOT address beyond capacity; lengths are whole sectors. */
  private checkRange(what: string, sector: number, bytes: number): void {
    if (bytes % SECTOR_SIZE !== 0) throw new RangeError(`blk: ${what} of ${bytes} bytes is not a multiple of ${SECTOR_SIZE}`);
    this.checkSectors(what, sector, bytes / SECTOR_SIZE);
  }

  private checkSectors(what: string, sector: number, count: number): void {
    if (!Number.isSafeInteger(sector) || sector < 0 || !Number.isSafeInteger(count) || count < 0) {
      throw new RangeError(`blk: ${what} at sector ${sector} of ${count} sectors is not a valid range`);
    }
    if (sector + count > this.cfg.capacity) {
      throw new RangeError(`blk: ${what} of ${sectorsText(count)} at sector ${sector} reaches past the capacity of ${this.cfg.capacity} sectors`);
    }
  }

  /** Split a transfer into requests of at most maxTransfer bytes, all in flight together. */
  private async chunked(sector: number, bytes: number, one: (sector: number, at: number, len: number) => Promise<void>): Promise<void> {
    if (bytes <= this.maxTransfer) {
      await one(sector, 0, bytes);
      return;
    }
    const parts: Promise<void>[] = [];
    for (let at = 0; at < bytes; at += this.maxTransfer) {
      const len = Math.min(this.maxTransfer, bytes - at);
      parts.push(one(sector + at / SECTOR_SIZE, at, len));
    }
    await Promise.all(parts);
  }

  /** DISCARD or WRITE_ZEROES over [sector, sector+count), in segments of at most the device's limits. */
  private async ranges(type: number, what: string, sector: number, count: number, flags: number): Promise<void> {
    this.checkSectors(what, sector, count);
    const discard = type === RequestType.DISCARD;
    const feature = discard ? BlkFeature.DISCARD : BlkFeature.WRITE_ZEROES;
    if (!hasFeature(this.features, feature)) {
      throw new BlkRequestError(`${what} of ${sectorsText(count)} at sector ${sector}`, undefined, `VIRTIO_BLK_F_${discard ? 'DISCARD' : 'WRITE_ZEROES'} was not negotiated`);
    }
    const maxSectors = Math.max(1, discard ? this.cfg.maxDiscardSectors : this.cfg.maxWriteZeroesSectors);
    const maxSegs = Math.max(1, discard ? this.cfg.maxDiscardSeg : this.cfg.maxWriteZeroesSeg);
    const segs = [];
    for (let s = sector; s < sector + count; s += maxSectors) {
      segs.push({ sector: s, numSectors: Math.min(maxSectors, sector + count - s), flags });
    }
    const requests: Promise<void>[] = [];
    for (let i = 0; i < segs.length; i += maxSegs) {
      const batch = segs.slice(i, i + maxSegs);
      const n = batch.reduce((acc, s) => acc + s.numSectors, 0);
      requests.push(this.submit(type, 0, encodeRangeSegments(batch), 0, `${what} of ${sectorsText(n)} at sector ${batch[0].sector}`));
    }
    await Promise.all(requests);
  }

  /**
   * Start a read or write that calls back instead of returning a promise, for callers that keep
   * a few BlkIo objects and start them again and again (a queue-depth workload): nothing is
   * allocated per operation. A bad range or a buffer beyond maxTransfer throws at once; what the
   * device answers comes to `io.done`.
   */
  start(io: BlkIo): void {
    const what = io.write ? 'write' : 'read';
    const len = io.buffer.length;
    this.checkRange(what, io.sector, len);
    if (len > this.maxTransfer) throw new RangeError(`blk: a started ${what} of ${len} bytes is beyond the ${this.maxTransfer}-byte transfer limit`);
    const total = REQUEST_HEADER_SIZE + len + STATUS_SIZE;
    const req = this.requests.take(total);
    if (req !== undefined) this.launch(req, io);
    else this.requests.whenRoom(total).then((r) => this.launch(r, io), (err: Error) => io.done(err));
  }

  private launch(req: BlkRequest, io: BlkIo): void {
    const len = io.buffer.length;
    req.prepare(io.write ? RequestType.OUT : RequestType.IN, io.sector, io.write ? io.buffer : EMPTY, io.write ? 0 : len, this.maxSegment);
    req.io = io;
    req.done = this.ioDone;
    this.pickQueue().start(req);
  }

  /**
   * One request: header, `out` data, `inLen` bytes of in-data, status, laid out in one DMA
   * block. `onData` sees the in-data (a view valid only during the call) when the status is OK.
   * `what` names the request in errors; reads and writes are named only when they fail, to keep
   * string building off their path.
   */
  private async submit(
    type: number,
    sector: number,
    out: Uint8Array,
    inLen: number,
    what?: string,
    onData?: (data: Uint8Array) => void,
  ): Promise<void> {
    const total = REQUEST_HEADER_SIZE + out.length + inLen + STATUS_SIZE;
    // The common case takes a request without a detour through the microtask queue.
    const req = this.requests.take(total) ?? (await this.requests.whenRoom(total));
    await new Promise<void>((resolve, reject) => {
      req.prepare(type, sector, out, inLen, this.maxSegment);
      req.done = (r) => {
        const err = this.outcome(r, what);
        if (err !== undefined) {
          reject(err);
          return;
        }
        onData?.(r.inData);
        resolve();
      };
      this.pickQueue().start(req);
    });
  }

  /** What became of a finished request: undefined for OK, else the error to report. */
  private outcome(req: BlkRequest, what: string | undefined): Error | undefined {
    if (req.error !== undefined) return req.error;
    const status = req.status;
    if (status === BlkStatus.OK) return undefined;
    const detail = STATUS_NAMES[status] ?? (status === STATUS_UNWRITTEN ? 'the device wrote no status' : `unknown status ${status}`);
    const ro = status === BlkStatus.IOERR && this.readOnly && req.type !== RequestType.IN ? ' (the device is read-only)' : '';
    const name = what ?? `${req.type === RequestType.IN ? 'read' : 'write'} of ${sectorsText((req.outLen + req.inLen) / SECTOR_SIZE)} at sector ${req.sector}`;
    return new BlkRequestError(name, STATUS_NAMES[status] === undefined ? undefined : status, detail + ro);
  }

  /** The queue with the fewest outstanding requests (round-robin among equals). */
  private pickQueue(): RequestQueue {
    let best = this.core.queue(this.nextQueue);
    for (let i = 1; i < this.queueCount; i++) {
      const q = this.core.queue((this.nextQueue + i) % this.queueCount);
      if (q.outstanding < best.outstanding) best = q;
    }
    this.nextQueue = (this.nextQueue + 1) % this.queueCount;
    return best;
  }
}
