/**
 * The virtio-scsi controller (§5.6): a control queue (task management, §5.6.6.2), an event queue
 * (hot-plug and parameter changes, §5.6.6.3) and one or more request queues of SCSI commands
 * (§5.6.6.1) for the LUNs of target.ts. While the device runs, LUNs can be attached, detached and
 * resized (attach, detach, resize): the driver hears of it on the event queue when it negotiated
 * HOTPLUG or CHANGE, and through unit attentions in any case.
 */
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { queueSizeError } from '../../virtio/ring.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import type { BlockBackend } from '../../storage/block-backend.ts';
import { type ScsiDisk, TransferOverrun } from './disk.ts';
import { ScsiEvents } from './events.ts';
import { CheckCondition, Status, fixedSense } from './sense.ts';
import { ScsiTargets, formatAddress } from './target.ts';
import { TaskSet, serveControl } from './tmf.ts';
import {
  COMMAND_HEADER_SIZE,
  DEFAULT_CDB_SIZE,
  DEFAULT_SENSE_SIZE,
  EVENT_SIZE,
  EventType,
  type LunAddress,
  MAX_LUN,
  MAX_TARGET,
  RESPONSE_HEADER_SIZE,
  ResetReason,
  Response,
  SCSI_CONFIG,
  type ScsiConfig,
  ScsiFeature,
  decodeCommandHeader,
  decodeLun,
  encodeCommandResponse,
} from './wire.ts';

/** Queue indices (§5.6.2): controlq, eventq, then the request queues. */
export const CONTROL_QUEUE = 0;
export const EVENT_QUEUE = 1;
export const FIRST_REQUEST_QUEUE = 2;

/** The largest cdb_size and sense_size a driver may set: what one request header may carry. */
const MAX_CDB_SIZE = 255;
const MAX_SENSE_SIZE = 4096;

/** seg_max: as virtio-blk's (blk/device.ts DEFAULT_SEG_MAX), every request fits a 128-entry ring. */
const DEFAULT_SEG_MAX = 126;

export interface ScsiDeviceOptions {
  readonly targets: ScsiTargets;
  /** Request queues (default 1). */
  readonly queues?: number;
  /** Largest ring accepted (default 1024). */
  readonly queueSize?: number;
  /** max_sectors: most 512-byte sectors per command (default 0xFFFF, QEMU's). */
  readonly maxSectors?: number;
  /** cmd_per_lun: commands the driver may queue per LUN (default 128, QEMU's). */
  readonly cmdPerLun?: number;
  readonly features?: {
    readonly hotplug?: boolean;
    readonly change?: boolean;
    readonly packed?: boolean;
    readonly eventIdx?: boolean;
    readonly indirect?: boolean;
  };
}

export class ScsiDevice implements VirtioDevice {
  readonly deviceId = DeviceId.SCSI;
  readonly name = 'scsi';
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly config: Uint8Array;
  readonly counters: DeviceCounters;
  readonly targets: ScsiTargets;
  private cfg: ScsiConfig;
  private readonly initial: ScsiConfig;
  private ctx: DeviceContext | undefined;
  private servers: QueueServer[] = [];
  private control: QueueServer | undefined;
  private events: ScsiEvents | undefined;
  private readonly tasks = new TaskSet();
  private readonly stats = { badTarget: 0, overrun: 0, checkCondition: 0, aborted: 0, eventsDropped: 0 };

  constructor(options: ScsiDeviceOptions) {
    this.targets = options.targets;
    const queues = options.queues ?? 1;
    if (!Number.isInteger(queues) || queues < 1 || queues > 1024) throw new RangeError(`virtio-scsi request queue count ${queues} is not from 1 to 1024`);
    this.numQueues = FIRST_REQUEST_QUEUE + queues;
    this.maxQueueSize = options.queueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    const sizeError = queueSizeError(this.maxQueueSize, false);
    if (sizeError !== undefined) throw new RangeError(`virtio-scsi ${sizeError}`);
    this.counters = new DeviceCounters(this.numQueues, () => ({ ...this.stats, tasksInFlight: this.tasks.size, luns: this.targets.size }));
    const f = options.features ?? {};
    const offer: [boolean, number][] = [
      [f.hotplug ?? true, ScsiFeature.HOTPLUG],
      [f.change ?? true, ScsiFeature.CHANGE],
      [f.packed ?? true, Feature.RING_PACKED],
      [f.eventIdx ?? true, Feature.EVENT_IDX],
      [f.indirect ?? true, Feature.INDIRECT_DESC],
    ];
    this.features = offer.reduce((acc, [on, bit]) => (on ? acc | featureBit(bit) : acc), 0n);
    this.initial = {
      numQueues: queues,
      segMax: Math.max(1, Math.min(DEFAULT_SEG_MAX, this.maxQueueSize - 2)),
      maxSectors: options.maxSectors ?? 0xffff,
      cmdPerLun: options.cmdPerLun ?? 128,
      eventInfoSize: EVENT_SIZE,
      senseSize: DEFAULT_SENSE_SIZE,
      cdbSize: DEFAULT_CDB_SIZE,
      maxChannel: 0,
      maxTarget: MAX_TARGET,
      maxLun: MAX_LUN,
    };
    this.cfg = { ...this.initial };
    this.config = SCSI_CONFIG.encode(this.cfg);
  }

  /**
   * §5.6.4: the driver may write sense_size and cdb_size; every other byte is restored. A value
   * the device cannot honour keeps the previous one (§5.6.4.1 lets the device refuse).
   */
  configWritten(offset: number, length: number): void {
    const written = SCSI_CONFIG.decode(this.config);
    if (SCSI_CONFIG.touches('senseSize', offset, length) && written.senseSize <= MAX_SENSE_SIZE) this.cfg = { ...this.cfg, senseSize: written.senseSize };
    if (SCSI_CONFIG.touches('cdbSize', offset, length) && written.cdbSize <= MAX_CDB_SIZE) this.cfg = { ...this.cfg, cdbSize: written.cdbSize };
    SCSI_CONFIG.encode(this.cfg, this.config);
  }

  /** Every LUN's storage gets ready for I/O (their file backends share one pool of I/O threads). */
  prepare(): void {
    for (const e of this.targets.entries()) e.disk.storage.prepare?.();
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.control = new QueueServer(ctx, CONTROL_QUEUE, async (req) => {
      if (!(await serveControl({ targets: this.targets, tasks: this.tasks }, req))) ctx.counters.queue(CONTROL_QUEUE).errors++;
    });
    this.events = new ScsiEvents(ctx, EVENT_QUEUE, () => this.stats.eventsDropped++);
    this.servers = Array.from({ length: this.numQueues - FIRST_REQUEST_QUEUE }, (_, i) => {
      const index = FIRST_REQUEST_QUEUE + i;
      return new QueueServer(ctx, index, (req) => this.command(req, index));
    });
    this.control.kick();
    this.events.kick();
    for (const s of this.servers) s.kick();
  }

  queueNotify(index: number): void {
    if (index === CONTROL_QUEUE) this.control?.kick();
    else if (index === EVENT_QUEUE) this.events?.kick();
    else this.servers[index - FIRST_REQUEST_QUEUE]?.kick();
  }

  /** §2.4: forget the activation; every LUN reports the reset (29/00) to its next command. */
  reset(): void {
    this.ctx = undefined;
    this.servers = [];
    this.control = undefined;
    this.events = undefined;
    this.cfg = { ...this.initial };
    SCSI_CONFIG.encode(this.cfg, this.config);
    for (const e of this.targets.entries()) e.disk.reset();
  }

  /** Features the driver accepted, while the device is active. */
  get driverFeatures(): bigint | undefined {
    return this.ctx?.features;
  }

  private negotiated(bit: number): boolean {
    return this.ctx !== undefined && hasFeature(this.ctx.features, bit);
  }

  // --- control interface of the running device ---

  /** Hot-plug `disk` at `address`; with HOTPLUG the driver hears TRANSPORT_RESET/RESCAN (§5.6.6.3.1). */
  attach(address: LunAddress, disk: ScsiDisk): void {
    this.targets.add(address, disk);
    if (this.negotiated(ScsiFeature.HOTPLUG)) this.events?.offer({ event: EventType.TRANSPORT_RESET, address, reason: ResetReason.RESCAN });
  }

  /**
   * Hot-unplug the LUN at `address`: it answers no new command; commands in flight finish first.
   * With HOTPLUG the driver hears TRANSPORT_RESET/REMOVED. Returns the disk, for its owner to close.
   */
  async detach(address: LunAddress): Promise<ScsiDisk> {
    const disk = this.targets.remove(address);
    if (this.negotiated(ScsiFeature.HOTPLUG)) this.events?.offer({ event: EventType.TRANSPORT_RESET, address, reason: ResetReason.REMOVED });
    await Promise.all(this.tasks.select((t) => t.address.target === address.target && t.address.lun === address.lun).map((t) => t.done));
    return disk;
  }

  /**
   * The LUN's image changed size: it now lives in `backend`. The next command reports CAPACITY
   * DATA HAS CHANGED; with CHANGE the driver also hears PARAM_CHANGE with that ASC/ASCQ in
   * `reason` (§5.6.6.3.3). Returns the backend replaced, for its owner to close.
   */
  resize(address: LunAddress, backend: BlockBackend): BlockBackend {
    const disk = this.targets.get(address);
    if (disk === undefined) throw new RangeError(`no SCSI LUN ${formatAddress(address)} is attached`);
    const old = disk.replaceBackend(backend);
    if (this.negotiated(ScsiFeature.CHANGE)) this.events?.offer({ event: EventType.PARAM_CHANGE, address, reason: (0x09 << 8) | 0x2a });
    return old;
  }

  // --- request queues (§5.6.6.1) ---

  /**
   * Serve one command. The writable part begins with the response (virtio_scsi_cmd_resp with
   * sense_size sense bytes), taken first and filled last; data-in follows it. A chain without
   * room for the response is returned unanswered (used length 0) and counted.
   */
  private async command(req: Request, queue: number): Promise<void> {
    const ctx = this.ctx;
    if (ctx === undefined) return;
    const { cdbSize, senseSize } = this.cfg;
    const respSize = RESPONSE_HEADER_SIZE + senseSize;
    if (req.chain.writableLength < respSize) {
      ctx.counters.queue(queue).errors++;
      return;
    }
    const respViews = req.writer.segments(respSize);
    const headerBytes = req.reader.readExact(COMMAND_HEADER_SIZE + cdbSize);
    let response: number = Response.OK;
    let status: number = Status.GOOD;
    let sense: Uint8Array = new Uint8Array(0);
    const dataOutLength = req.reader.remaining;
    const dataInLength = req.writer.remaining;
    if (headerBytes === undefined) {
      response = Response.FAILURE;
    } else {
      const header = decodeCommandHeader(headerBytes, cdbSize);
      const address = decodeLun(header.lun);
      if (address === undefined || !this.targets.hasTarget(address.target)) {
        response = Response.BAD_TARGET;
        this.stats.badTarget++;
      } else {
        const task = this.tasks.track(header.id, address, async (t) => {
          try {
            await this.targets.execute(address, header.cdb, { in: req.writer, out: req.reader });
          } catch (err) {
            if (err instanceof CheckCondition) {
              status = Status.CHECK_CONDITION;
              sense = fixedSense(err.sense, err.field, err.information);
              this.stats.checkCondition++;
            } else if (err instanceof TransferOverrun) {
              response = Response.OVERRUN;
              this.stats.overrun++;
            } else {
              response = Response.TARGET_FAILURE;
              ctx.log.error({ err }, `LUN ${formatAddress(address)}: command ${header.cdb[0]} failed`);
            }
          }
          if (t.abortedWith !== undefined) {
            response = t.abortedWith;
            status = Status.GOOD;
            sense = new Uint8Array(0);
            this.stats.aborted++;
          }
        });
        await task.done;
      }
    }
    // A reset while the command ran: nothing may be written to the guest (serve.ts drops the chain).
    if (this.ctx !== ctx) return;
    if (response !== Response.OK || status !== Status.GOOD) ctx.counters.queue(queue).errors++;
    // residual (§5.6.6.1): what of the data buffer was not transferred.
    const residual = dataInLength > 0 ? req.writer.remaining : dataOutLength > 0 ? req.reader.remaining : 0;
    const resp = new Uint8Array(respSize);
    encodeCommandResponse({ senseLen: sense.length, residual: response === Response.OVERRUN ? Math.max(dataInLength, dataOutLength) : residual, statusQualifier: 0, status, response, sense }, resp);
    let at = 0;
    for (const v of respViews) {
      v.set(resp.subarray(at, at + v.length));
      at += v.length;
    }
  }
}
