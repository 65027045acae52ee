/**
 * The guest driver of the input device (§5.8): it asks the configuration space what the device
 * is (§5.8.5.2, the questions Linux's virtio_input asks), receives events as a stream, and sends
 * LED state on the status queue.
 */
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { DeviceId } from '../../virtio/constants.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
import { EventReceiver } from '../../virtio/event-receiver.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { EVENTQ, STATUSQ } from './device.ts';
import {
  type AbsInfo, ConfigSelect, type DevIds, EVENT_BYTES, EvType, INPUT_CONFIG,
  decodeAbsInfo, decodeBitmap, decodeDevIds, decodeEvent, encodeEvent,
} from './wire.ts';

/** What the device said about itself. */
export interface InputDeviceInfo {
  readonly name: string;
  readonly serial: string;
  readonly ids: DevIds;
  readonly props: readonly number[];
  /** Codes per event type, for the types with any. */
  readonly events: ReadonlyMap<number, readonly number[]>;
  readonly abs: ReadonlyMap<number, AbsInfo>;
}

/** The event types Linux asks about (virtinput_probe), device to driver and driver to device. */
const ASKED_TYPES = [EvType.KEY, EvType.REL, EvType.ABS, EvType.MSC, EvType.SW, EvType.LED, EvType.SND, EvType.REP];

export interface InputDriverOptions {
  readonly queueSize?: number;
  /** Events kept for a reader that does not read (default 4096); more are dropped and counted. */
  readonly highWaterMark?: number;
  readonly log?: Logger;
}

export class InputDriver {
  /** Events from the device, in the order it sent them, as objects. */
  readonly events: Readable;
  /** Events dropped because the reader of `events` fell behind by more than the high-water mark. */
  dropped = 0;
  private readonly receiver: EventReceiver;

  private constructor(
    readonly core: VirtioDriver,
    readonly info: InputDeviceInfo,
    limit: number,
  ) {
    this.events = new Readable({ objectMode: true, read: () => {} });
    const { transport } = core;
    this.receiver = new EventReceiver(core.queue(EVENTQ), transport.memory, transport.dma, {
      bufferSize: EVENT_BYTES,
      log: core.log,
      onBuffer: (bytes) => {
        const event = decodeEvent(bytes);
        if (event === undefined) {
          core.log.warn({ length: bytes.length }, 'input: the device returned an event buffer shorter than an event');
          return;
        }
        // Input is a live feed, not a stream to throttle: past the bound, a reader that left events unread loses the newest.
        if (this.events.readableLength >= limit) this.dropped++;
        else this.events.push(event);
      },
    });
    void this.receiver.stopped.then(() => this.events.push(null));
  }

  static async open(transport: DriverTransport, options: InputDriverOptions = {}): Promise<InputDriver> {
    const limit = options.highWaterMark ?? 4096;
    if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError(`highWaterMark ${limit} is not a positive integer`);
    const core = await VirtioDriver.start(transport, {
      name: 'input',
      deviceId: DeviceId.INPUT,
      features: FRAMEWORK_FEATURES,
      queues: 2,
      queueSize: options.queueSize,
      log: options.log,
    });
    try {
      return new InputDriver(core, await readInfo(core), limit);
    } catch (err) {
      await core.close();
      throw err;
    }
  }

  /** Tell the device an LED is on or off (§5.8.6.2); resolves when the device took it. */
  async setLed(code: number, on: boolean): Promise<void> {
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(EVENT_BYTES, 8);
    if (addr === undefined) throw new Error('input: DMA memory exhausted allocating a status event');
    try {
      memory.write(addr, encodeEvent({ type: EvType.LED, code, value: on ? 1 : 0 }));
      await this.core.queue(STATUSQ).submit([{ addr, len: EVENT_BYTES }], []);
    } finally {
      dma.free(addr);
    }
  }

  async close(): Promise<void> {
    await this.core.close();
    await this.receiver.stopped;
  }
}

/** §5.8.5.2: write select and subsel, then read size and that many bytes of u. */
async function ask(core: VirtioDriver, select: number, subsel: number): Promise<Uint8Array> {
  // Two single-byte writes, as Linux makes them: a device must answer after each.
  await core.writeConfig(INPUT_CONFIG.offset.select, Uint8Array.of(select));
  await core.writeConfig(INPUT_CONFIG.offset.subsel, Uint8Array.of(subsel));
  const size = (await core.readConfig(INPUT_CONFIG.offset.size, 1))[0];
  const n = Math.min(size, INPUT_CONFIG.size - INPUT_CONFIG.offset.u);
  return n === 0 ? new Uint8Array(0) : core.readConfig(INPUT_CONFIG.offset.u, n);
}

async function readInfo(core: VirtioDriver): Promise<InputDeviceInfo> {
  const text = (b: Uint8Array): string => new TextDecoder().decode(b).replace(/\0.*$/s, '');
  const name = text(await ask(core, ConfigSelect.ID_NAME, 0));
  const serial = text(await ask(core, ConfigSelect.ID_SERIAL, 0));
  const ids = decodeDevIds(await ask(core, ConfigSelect.ID_DEVIDS, 0));
  const props = decodeBitmap(await ask(core, ConfigSelect.PROP_BITS, 0));
  const events = new Map<number, number[]>();
  for (const type of ASKED_TYPES) {
    const codes = decodeBitmap(await ask(core, ConfigSelect.EV_BITS, type));
    if (codes.length > 0) events.set(type, codes);
  }
  const abs = new Map<number, AbsInfo>();
  for (const axis of events.get(EvType.ABS) ?? []) abs.set(axis, decodeAbsInfo(await ask(core, ConfigSelect.ABS_INFO, axis)));
  await core.writeConfig(INPUT_CONFIG.offset.select, Uint8Array.of(ConfigSelect.UNSET));
  return { name, serial, ids, props, events, abs };
}
