/**
 * The virtio-blk device (§5.2): a disk (a BlockBackend) served on one or more request queues.
 * Requests are parsed and performed by request.ts; this module owns what the device offers,
 * the configuration space, the cache mode and one queue server per request queue.
 */
import { INDIRECT_TABLE_MIN_LIMIT } from '../../virtio/chain.ts';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { queueSizeError } from '../../virtio/ring.ts';
import { QueueServer } from '../../virtio/serve.ts';
import type { BlockBackend } from '../../storage/block-backend.ts';
import { type RangeLimits, type RequestTarget, requestHandler } from './request.ts';
import { BLK_CONFIG, BLK_FEATURE_NAMES, BlkFeature, type BlkConfig, ID_SIZE, SECTOR_SIZE } from './wire.ts';

/** Optional features, each on by default where it makes sense. */
export interface BlkFeatureOptions {
  /** VIRTIO_BLK_F_FLUSH (default on: §5.2.5.2 says devices SHOULD always offer it). */
  readonly flush?: boolean;
  /** VIRTIO_BLK_F_CONFIG_WCE: the driver may switch the cache mode (default on; needs flush). */
  readonly configWce?: boolean;
  /** VIRTIO_BLK_F_DISCARD (default on for a writable disk). */
  readonly discard?: boolean;
  /** VIRTIO_BLK_F_WRITE_ZEROES (default on for a writable disk). */
  readonly writeZeroes?: boolean;
  /** Ring features offered (default: packed rings, event index, indirect descriptors). */
  readonly packed?: boolean;
  readonly eventIdx?: boolean;
  readonly indirect?: boolean;
  /**
   * VIRTIO_F_IN_ORDER (default off): requests then complete in submission order, so a slow one
   * holds back those behind it; a disk gains little from it.
   */
  readonly inOrder?: boolean;
}

export interface BlkDeviceOptions {
  readonly backend: BlockBackend;
  /** Request queues (default 1); more than one offers VIRTIO_BLK_F_MQ. */
  readonly queues?: number;
  /**
   * Largest queue size accepted (default 1024, every size a front-end uses). The front-end picks
   * the ring size, at or below this; seg_max does not follow it (see DEFAULT_SEG_MAX).
   */
  readonly queueSize?: number;
  /** Offer VIRTIO_BLK_F_RO and refuse writes (default: whether the backend is read-only). */
  readonly readOnly?: boolean;
  /** The GET_ID string: ASCII, at most 20 bytes (default empty). */
  readonly serial?: string;
  /** The cache mode after reset: writeback (default) or writethrough. */
  readonly writeback?: boolean;
  /**
   * Most data segments per request (VIRTIO_BLK_F_SEG_MAX; default DEFAULT_SEG_MAX, or less when
   * queueSize - 2 is smaller). A request's chain is seg_max + 2 descriptors (header and status).
   */
  readonly segMax?: number;
  /** Largest data segment in bytes (offers VIRTIO_BLK_F_SIZE_MAX when given). */
  readonly sizeMax?: number;
  /** Logical block size in bytes to advertise (VIRTIO_BLK_F_BLK_SIZE; default 512). */
  readonly blkSize?: number;
  /** Limits announced for discard and write-zeroes (defaults: 32 MiB per segment, 32 segments). */
  readonly maxDiscardSectors?: number;
  readonly maxDiscardSeg?: number;
  readonly maxWriteZeroesSectors?: number;
  readonly maxWriteZeroesSeg?: number;
  readonly features?: BlkFeatureOptions;
}

/**
 * seg_max when not given. The configuration space is read before the front-end chooses a ring
 * size, so seg_max cannot follow it the way QEMU's built-in virtio-blk does (seg-max-adjust:
 * queue-size - 2). What a Linux driver does with it (drivers/block/virtio_blk.c takes seg_max as
 * its max_segments, capped only at 32766; drivers/virtio/virtio_ring.c):
 *  - with VIRTIO_F_INDIRECT_DESC, a request of n segments is one indirect table of n + 2
 *    descriptors whatever the ring size. The rings accept a table up to the larger of the ring
 *    size and 1024 entries (INDIRECT_TABLE_MIN_LIMIT, as QEMU's VIRTQUEUE_MAX_SIZE), so any
 *    seg_max up to 1022 is never refused, on any ring.
 *  - without it, or when the driver cannot allocate a table and falls back to direct descriptors,
 *    the chain takes n + 2 ring slots; a chain larger than the ring is never built, the request
 *    waits for room that never comes. So seg_max + 2 should not exceed the smallest ring a
 *    front-end picks.
 * 126 is the largest value that keeps every request within the ring, as §2.7.5.3.1 asks of the
 * driver, on every ring of at least 128 entries: QEMU's vhost-user-blk default (128), libblkio's
 * (256), up to QEMU's largest (1024). It is also what qemu-storage-daemon's vhost-user-blk export
 * announces. Smaller rings still work through the indirect-table allowance.
 */
export const DEFAULT_SEG_MAX = 126;
const DEFAULT_RANGE_SECTORS = (32 * 1024 * 1024) / SECTOR_SIZE;
const DEFAULT_RANGE_SEGMENTS = 32;
const U32_MAX = 0xffff_ffff;

function checkCount(what: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`virtio-blk ${what} ${value} is not an integer from ${min} to ${max}`);
  }
  return value;
}

/** The GET_ID answer: the serial NUL-padded to 20 bytes (§5.2.6). */
function encodeSerial(serial: string): Uint8Array {
  if (!/^[\x20-\x7e]*$/.test(serial) || serial.length > ID_SIZE) {
    throw new RangeError(`virtio-blk serial "${serial}" is not printable ASCII of at most ${ID_SIZE} characters`);
  }
  const id = new Uint8Array(ID_SIZE);
  id.set(new TextEncoder().encode(serial));
  return id;
}

export class BlkDevice implements VirtioDevice {
  readonly deviceId = DeviceId.BLOCK;
  readonly name = 'blk';
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly featureNames = BLK_FEATURE_NAMES;
  readonly config: Uint8Array;
  readonly counters: DeviceCounters;
  readonly backend: BlockBackend;
  readonly readOnly: boolean;

  private readonly id: Uint8Array;
  private readonly initialWriteback: number;
  private readonly discardLimits: RangeLimits;
  private readonly writeZeroesLimits: RangeLimits;
  /** Current configuration; `writeback` is the one field the driver may change. */
  private cfg: BlkConfig;
  private servers: QueueServer[] = [];

  constructor(options: BlkDeviceOptions) {
    const backend = options.backend;
    if (backend.size % SECTOR_SIZE !== 0) {
      throw new RangeError(`virtio-blk backend size ${backend.size} is not a whole number of ${SECTOR_SIZE}-byte sectors`);
    }
    this.readOnly = options.readOnly ?? backend.readOnly;
    if (!this.readOnly && backend.readOnly) {
      throw new RangeError('virtio-blk device cannot be writable: its backend is read-only');
    }
    this.backend = backend;
    this.numQueues = checkCount('queue count', options.queues ?? 1, 1, 0xffff);
    this.counters = new DeviceCounters(this.numQueues);
    this.maxQueueSize = options.queueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    const sizeError = queueSizeError(this.maxQueueSize, false);
    if (sizeError !== undefined) throw new RangeError(`virtio-blk ${sizeError}`);
    this.id = encodeSerial(options.serial ?? '');

    const f = options.features ?? {};
    const flush = f.flush ?? true;
    const configWce = f.configWce ?? flush;
    if (configWce && !flush) throw new RangeError('virtio-blk CONFIG_WCE needs FLUSH (§5.2.5.2)');
    const discard = f.discard ?? !this.readOnly;
    const writeZeroes = f.writeZeroes ?? !this.readOnly;
    const indirect = f.indirect ?? true;
    // The longest chain a request may take: in an indirect table, or in the ring itself.
    const chainLimit = indirect ? Math.max(this.maxQueueSize, INDIRECT_TABLE_MIN_LIMIT) : this.maxQueueSize;
    const segMax = checkCount(
      'seg_max',
      options.segMax ?? Math.max(1, Math.min(DEFAULT_SEG_MAX, this.maxQueueSize - 2)),
      1,
      Math.max(1, chainLimit - 2),
    );
    const sizeMax = options.sizeMax === undefined ? 0 : checkCount('size_max', options.sizeMax, 1, U32_MAX);
    const blkSize = options.blkSize ?? SECTOR_SIZE;
    if (!Number.isInteger(blkSize) || blkSize < SECTOR_SIZE || (blkSize & (blkSize - 1)) !== 0) {
      throw new RangeError(`virtio-blk block size ${blkSize} is not a power of two of at least ${SECTOR_SIZE}`);
    }
    this.discardLimits = {
      maxSectors: checkCount('max_discard_sectors', options.maxDiscardSectors ?? DEFAULT_RANGE_SECTORS, 1, U32_MAX),
      maxSegments: checkCount('max_discard_seg', options.maxDiscardSeg ?? DEFAULT_RANGE_SEGMENTS, 1, U32_MAX),
    };
    this.writeZeroesLimits = {
      maxSectors: checkCount('max_write_zeroes_sectors', options.maxWriteZeroesSectors ?? DEFAULT_RANGE_SECTORS, 1, U32_MAX),
      maxSegments: checkCount('max_write_zeroes_seg', options.maxWriteZeroesSeg ?? DEFAULT_RANGE_SEGMENTS, 1, U32_MAX),
    };

    const offer: [boolean, number][] = [
      [true, BlkFeature.SEG_MAX],
      [sizeMax > 0, BlkFeature.SIZE_MAX],
      [this.readOnly, BlkFeature.RO],
      [true, BlkFeature.BLK_SIZE],
      [flush, BlkFeature.FLUSH],
      [configWce, BlkFeature.CONFIG_WCE],
      [this.numQueues > 1, BlkFeature.MQ],
      [discard, BlkFeature.DISCARD],
      [writeZeroes, BlkFeature.WRITE_ZEROES],
      [f.packed ?? true, Feature.RING_PACKED],
      [f.eventIdx ?? true, Feature.EVENT_IDX],
      [indirect, Feature.INDIRECT_DESC],
      [f.inOrder ?? false, Feature.IN_ORDER],
    ];
    this.features = offer.reduce((acc, [on, bit]) => (on ? acc | featureBit(bit) : acc), 0n);

    this.initialWriteback = (options.writeback ?? true) && flush ? 1 : 0;
    this.cfg = {
      capacity: backend.size / SECTOR_SIZE,
      sizeMax,
      segMax,
      cylinders: 0,
      heads: 0,
      sectors: 0,
      blkSize,
      physicalBlockExp: 0,
      alignmentOffset: 0,
      minIoSize: 0,
      optIoSize: 0,
      writeback: this.initialWriteback,
      numQueues: this.numQueues,
      maxDiscardSectors: discard ? this.discardLimits.maxSectors : 0,
      maxDiscardSeg: discard ? this.discardLimits.maxSegments : 0,
      discardSectorAlignment: discard ? blkSize / SECTOR_SIZE : 0,
      maxWriteZeroesSectors: writeZeroes ? this.writeZeroesLimits.maxSectors : 0,
      maxWriteZeroesSeg: writeZeroes ? this.writeZeroesLimits.maxSegments : 0,
      writeZeroesMayUnmap: writeZeroes && backend.canUnmap ? 1 : 0,
    };
    this.config = BLK_CONFIG.encode(this.cfg);
  }

  /** Disk size in sectors. */
  get capacity(): number {
    return this.cfg.capacity;
  }

  /** Whether the cache is currently in writeback mode (the `writeback` field). */
  get writeback(): boolean {
    return this.cfg.writeback !== 0;
  }

  /**
   * The driver wrote configuration bytes. Only `writeback` is writable, and only with
   * CONFIG_WCE offered (§5.2.5); any other byte the driver wrote is restored.
   */
  configWritten(offset: number, length: number): void {
    const touched = BLK_CONFIG.touches('writeback', offset, length);
    if (touched && hasFeature(this.features, BlkFeature.CONFIG_WCE)) {
      this.cfg = { ...this.cfg, writeback: this.config[BLK_CONFIG.offset.writeback] !== 0 ? 1 : 0 };
    }
    BLK_CONFIG.encode(this.cfg, this.config);
  }

  prepare(): void {
    this.backend.prepare?.();
  }

  activate(ctx: DeviceContext): void {
    const has = (bit: number): boolean => hasFeature(ctx.features, bit);
    const flush = has(BlkFeature.FLUSH);
    const configWce = has(BlkFeature.CONFIG_WCE);
    // §5.2.5.2: with CONFIG_WCE but not FLUSH the cache starts writethrough.
    if (configWce && !flush) this.setWriteback(0);
    const target: RequestTarget = {
      backend: this.backend,
      capacity: this.cfg.capacity,
      readOnly: this.readOnly,
      id: this.id,
      maxDataBytes:
        has(BlkFeature.SEG_MAX) && has(BlkFeature.SIZE_MAX) ? this.cfg.segMax * this.cfg.sizeMax : Infinity,
      flush,
      discard: has(BlkFeature.DISCARD) ? this.discardLimits : undefined,
      writeZeroes: has(BlkFeature.WRITE_ZEROES) ? this.writeZeroesLimits : undefined,
      writeZeroesMayUnmap: this.cfg.writeZeroesMayUnmap !== 0,
      // §5.2.6.2: writes are stable at completion unless FLUSH was negotiated and the cache is
      // writeback (fixed by FLUSH alone, or chosen through `writeback` with CONFIG_WCE).
      writethrough: () => !flush || (configWce && this.cfg.writeback === 0),
      backendFailed: (what, err) => ctx.log.warn({ err }, `${what} failed; request answered IOERR`),
    };
    const serve = requestHandler(target);
    this.servers = Array.from({ length: this.numQueues }, (_, i) => new QueueServer(ctx, i, serve));
    for (const s of this.servers) s.kick();
  }

  queueNotify(index: number): void {
    this.servers[index]?.kick();
  }

  /**
   * §2.4: forget the activation. Requests in flight complete without writing a status or a used
   * element (serve.ts), but a backend read already running still fills the guest buffers it was
   * given: thread-pool I/O cannot be cancelled. A transport that must rule that out waits for its
   * queues' in-flight count to reach zero first, as vhost-user does before stopping a ring.
   */
  reset(): void {
    this.servers = [];
    this.setWriteback(this.initialWriteback);
  }

  private setWriteback(value: number): void {
    this.cfg = { ...this.cfg, writeback: value };
    BLK_CONFIG.encode(this.cfg, this.config);
  }
}

export interface VhostUserBlkOptions {
  readonly queues?: number;
  readonly readOnly?: boolean;
  /** Largest ring size accepted (default 1024: every size a front-end picks). */
  readonly queueSize?: number;
}

/**
 * A BlkDevice for a vhost-user front-end. The front-end, not the device, picks the ring size,
 * and only after reading the configuration space; so the device accepts every size up to its
 * maximum and announces a seg_max that suits them all (DEFAULT_SEG_MAX).
 */
export function vhostUserBlkDevice(backend: BlockBackend, options: VhostUserBlkOptions = {}): BlkDevice {
  return new BlkDevice({
    backend,
    queues: options.queues ?? 1,
    readOnly: options.readOnly === true,
    queueSize: options.queueSize,
  });
}
