/**
 * The virtio-scsi driver (§5.6): commands to a LUN on the request queues, task management on the
 * control queue, events from the event queue. It moves CDBs and data; what they mean is the
 * initiator's (initiator.ts). The device is not trusted: a response shorter than its header, a
 * sense length or residual larger than the buffers are errors, and every used length is checked.
 */
import type { Logger } from 'pino';
import { DeviceId, Feature, featureBit } from '../../virtio/constants.ts';
import { DEFAULT_MAX_REQUEST_QUEUES, VirtioDriver } from '../../virtio/driver-core.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { EventReceiver } from '../../virtio/event-receiver.ts';
import type { Segment } from '../../virtio/queue.ts';
import {
  DEFAULT_CDB_SIZE,
  DEFAULT_SENSE_SIZE,
  type DecodedEvent,
  EVENT_SIZE,
  type LunAddress,
  RESPONSE_HEADER_SIZE,
  SCSI_CONFIG,
  type ScsiConfig,
  ScsiFeature,
  TaskAttr,
  decodeCommandResponse,
  decodeEvent,
  encodeCommandHeader,
  encodeLun,
  encodeTmf,
} from './wire.ts';

/** What this driver implements: hot-plug and parameter-change events, and the ring features. */
export const SCSI_DRIVER_FEATURES: bigint = [ScsiFeature.HOTPLUG, ScsiFeature.CHANGE, Feature.RING_PACKED, Feature.EVENT_IDX, Feature.INDIRECT_DESC, Feature.IN_ORDER].reduce(
  (acc, bit) => acc | featureBit(bit),
  0n,
);

const CONTROL_QUEUE = 0;
const EVENT_QUEUE = 1;
const FIRST_REQUEST_QUEUE = 2;

export interface ScsiDriverOptions {
  readonly features?: bigint;
  /** Use a packed ring when offered (default true). */
  readonly packed?: boolean;
  /** Largest queue size (default 256). */
  readonly queueSize?: number;
  readonly log?: Logger;
}

/** What the device answered a command (§5.6.6.1). */
export interface CommandResult {
  readonly response: number;
  /** SCSI status (SAM-5 §5.3). */
  readonly status: number;
  readonly sense: Uint8Array;
  readonly residual: number;
  /** The data-in bytes transferred (the buffer less the residual). */
  readonly dataIn: Uint8Array;
}

export interface CommandOptions {
  readonly dataOut?: Uint8Array;
  readonly dataInLength?: number;
}

/** The device broke the protocol: a response that cannot be right. */
export class ScsiProtocolError extends Error {
  constructor(message: string) {
    super(`scsi: ${message}`);
    this.name = 'ScsiProtocolError';
  }
}

export class ScsiDriver {
  private nextTag = 1n;
  private nextQueue = 0;
  private readonly listeners: ((event: DecodedEvent) => void)[] = [];
  private readonly events: EventReceiver;

  private constructor(
    readonly core: VirtioDriver,
    readonly config: ScsiConfig,
    /** Request queues in use. */
    readonly requestQueues: number,
    log: Logger | undefined,
  ) {
    this.events = new EventReceiver(core.queue(EVENT_QUEUE), core.transport.memory, core.transport.dma, {
      bufferSize: EVENT_SIZE,
      buffers: Math.min(16, core.queue(EVENT_QUEUE).size),
      onBuffer: (bytes) => {
        if (bytes.length < EVENT_SIZE) return;
        const event = decodeEvent(bytes);
        for (const l of this.listeners) l(event);
      },
      log: log ?? core.log,
    });
  }

  static async open(transport: DriverTransport, options: ScsiDriverOptions = {}): Promise<ScsiDriver> {
    const core = await VirtioDriver.start(transport, {
      name: 'scsi',
      deviceId: DeviceId.SCSI,
      features: (options.features ?? SCSI_DRIVER_FEATURES) & ~(options.packed === false ? featureBit(Feature.RING_PACKED) : 0n),
      queues: async (plan) => {
        // §5.6.4: num_queues request queues follow controlq and eventq, and the driver MAY use only
        // one. A request queue always exists, so 0 reads as 1; the device's word only bounds what
        // the driver wants, never raises it.
        const raw = await plan.readConfig(SCSI_CONFIG.offset.numQueues, 4);
        const offered = Math.max(1, new DataView(raw.buffer, raw.byteOffset, 4).getUint32(0, true));
        return FIRST_REQUEST_QUEUE + Math.min(DEFAULT_MAX_REQUEST_QUEUES, offered);
      },
      queueSize: options.queueSize,
      log: options.log,
    });
    try {
      const config = SCSI_CONFIG.decode(await core.readConfig(0, SCSI_CONFIG.size));
      // The defaults this driver speaks (§5.6.4): a device announcing others is asked for ours.
      if (config.cdbSize !== DEFAULT_CDB_SIZE || config.senseSize !== DEFAULT_SENSE_SIZE) {
        throw new ScsiProtocolError(`the device uses cdb_size ${config.cdbSize} and sense_size ${config.senseSize}, not ${DEFAULT_CDB_SIZE} and ${DEFAULT_SENSE_SIZE}`);
      }
      return new ScsiDriver(core, config, core.queueCount - FIRST_REQUEST_QUEUE, options.log);
    } catch (err) {
      await core.close();
      throw err;
    }
  }

  get features(): bigint {
    return this.core.features;
  }

  /** Listen to events (hot-plug, parameter changes). */
  onEvent(listener: (event: DecodedEvent) => void): void {
    this.listeners.push(listener);
  }

  /** Send `cdb` to `address` and return the device's answer; the command's tag is returned too, for ABORT TASK. */
  async command(address: LunAddress, cdb: Uint8Array, options: CommandOptions = {}): Promise<CommandResult> {
    const tag = this.nextTag++;
    return this.commandTagged(tag, address, cdb, options);
  }

  /** Like command(), with a tag chosen by the caller. */
  async commandTagged(tag: bigint, address: LunAddress, cdb: Uint8Array, options: CommandOptions = {}): Promise<CommandResult> {
    const { cdbSize, senseSize } = this.config;
    if (cdb.length > cdbSize) throw new RangeError(`scsi: a CDB of ${cdb.length} bytes does not fit cdb_size ${cdbSize}`);
    const full = new Uint8Array(cdbSize);
    full.set(cdb);
    const header = encodeCommandHeader({ lun: encodeLun(address), id: tag, taskAttr: TaskAttr.SIMPLE, prio: 0, crn: 0, cdb: full }, cdbSize);
    const dataOut = options.dataOut ?? new Uint8Array(0);
    const dataInLength = options.dataInLength ?? 0;
    const respSize = RESPONSE_HEADER_SIZE + senseSize;
    const { dma, memory } = this.core.transport;
    const total = header.length + dataOut.length + respSize + dataInLength;
    const addr = dma.alloc(total, 16);
    if (addr === undefined) throw new Error(`scsi: DMA memory exhausted allocating ${total} bytes`);
    try {
      memory.write(addr, header);
      if (dataOut.length > 0) memory.write(addr + header.length, dataOut);
      const respAddr = addr + header.length + dataOut.length;
      const readable: Segment[] = [{ addr, len: header.length }];
      if (dataOut.length > 0) readable.push({ addr: addr + header.length, len: dataOut.length });
      const writable: Segment[] = [{ addr: respAddr, len: respSize }];
      if (dataInLength > 0) writable.push({ addr: respAddr + respSize, len: dataInLength });
      const queue = FIRST_REQUEST_QUEUE + (this.nextQueue++ % this.requestQueues);
      const used = await this.core.queue(queue).submit(readable, writable);
      // §2.7.8.2 lets the used length underestimate what the device wrote ("len is permitted to be
      // an underestimate"), and QEMU 11.1's virtio-scsi on a packed ring returns data-out commands
      // with length 0; like Linux's virtio_scsi, the response is read whatever the length says. A
      // length past the buffers is still a broken device.
      if (used > respSize + dataInLength) throw new ScsiProtocolError(`a used length of ${used} bytes for ${respSize + dataInLength} writable (CDB ${cdb[0].toString(16)}h, queue ${queue})`);
      const resp = decodeCommandResponse(memory.slice(respAddr, respSize).slice());
      if (resp.senseLen > 0xffff || resp.residual > Math.max(dataInLength, dataOut.length)) {
        throw new ScsiProtocolError(`sense_len ${resp.senseLen} or residual ${resp.residual} larger than the buffers`);
      }
      const transferred = dataInLength > 0 ? Math.max(0, dataInLength - resp.residual) : 0;
      return {
        response: resp.response,
        status: resp.status,
        sense: resp.sense,
        residual: resp.residual,
        dataIn: memory.slice(respAddr + respSize, transferred).slice(),
      };
    } finally {
      dma.free(addr);
    }
  }

  /** A task management function (§5.6.6.2); returns the response code. */
  async taskManagement(subtype: number, address: LunAddress, tag = 0n): Promise<number> {
    const request = encodeTmf({ subtype, lun: encodeLun(address), id: tag });
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(request.length + 1, 8);
    if (addr === undefined) throw new Error('scsi: DMA memory exhausted for a task management request');
    try {
      memory.write(addr, request);
      const used = await this.core.queue(CONTROL_QUEUE).submit([{ addr, len: request.length }], [{ addr: addr + request.length, len: 1 }]);
      if (used < 1) throw new ScsiProtocolError('a task management request returned without a response');
      return memory.slice(addr + request.length, 1)[0];
    } finally {
      dma.free(addr);
    }
  }

  async close(): Promise<void> {
    await this.core.close();
    await this.events.stopped;
  }
}
