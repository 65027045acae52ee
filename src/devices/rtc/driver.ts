/**
 * The guest driver of the RTC device (VIRTIO 1.4, "RTC Device"): it enumerates the clocks and
 * their capabilities, reads them, sets, reads and cancels alarms and hears their expirations on
 * the alarmq. Times are bigint nanoseconds since each clock's epoch.
 *
 * The device is not trusted: a response whose used length is not its type's response size, or
 * whose status is not OK, is an RtcError naming the request.
 */
import type { Logger } from 'pino';
import { DeviceId, hasFeature } from '../../virtio/constants.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
import { EventReceiver } from '../../virtio/event-receiver.ts';
import { FRAMEWORK_FEATURES, featureMask } from '../../virtio/features.ts';
import type { RequestQueue } from '../../virtio/request-queue.ts';
import {
  ClockType, FLAG_ALARM_CAP, FLAG_ALARM_ENABLED, FLAG_CROSS_CAP, MESSAGE_SIZES, MsgType, NOTIF_ALARM_SIZE, RtcFeature, RtcStatus,
  decodeAlarmNotification, decodeResponse, encodeRequest, msgTypeName, type RtcRequest, type RtcResponse,
} from './wire.ts';

export interface RtcDriverOptions {
  /** Negotiate VIRTIO_RTC_F_ALARM when offered (default true). */
  readonly alarm?: boolean;
  readonly queueSize?: number;
  readonly log?: Logger;
}

/** What CLOCK_CAP says of one clock. */
export interface ClockInfo {
  readonly id: number;
  /** ClockType value. */
  readonly type: number;
  /** Smear value. */
  readonly smearing: number;
  /** The clock has an alarm (VIRTIO_RTC_FLAG_ALARM_CAP, only with VIRTIO_RTC_F_ALARM). */
  readonly alarm: boolean;
}

export interface AlarmSetting {
  readonly time: bigint;
  readonly enabled: boolean;
}

/** A request the device answered with a status other than OK, or with the wrong length. */
export class RtcError extends Error {
  constructor(
    message: string,
    /** The RtcStatus, or undefined when the answer was malformed. */
    readonly status: number | undefined,
  ) {
    super(message);
    this.name = 'RtcError';
  }
}

const STATUS_TEXT: Record<number, string> = {
  [RtcStatus.EOPNOTSUPP]: 'EOPNOTSUPP', [RtcStatus.ENODEV]: 'ENODEV', [RtcStatus.EINVAL]: 'EINVAL', [RtcStatus.EIO]: 'EIO',
};

export class RtcDriver {
  private readonly alarmListeners: ((clockId: number) => void)[] = [];

  private constructor(
    readonly core: VirtioDriver,
    private readonly requestq: RequestQueue,
    /** Every clock, by id, as CLOCK_CAP described it when the driver started. */
    readonly clocks: readonly ClockInfo[],
  ) {}

  private receiver: EventReceiver | undefined;

  /**
   * "Alarm Operation": clear every alarm a previous driver left, then post alarmq buffers, so no
   * stale expiration reaches this driver.
   */
  private async listenForAlarms(): Promise<void> {
    for (const c of this.clocks) if (c.alarm) await this.setAlarm(c.id, 0n, false);
    const { dma, memory } = this.core.transport;
    const alarmq = this.core.queue(1);
    this.receiver = new EventReceiver(alarmq, memory, dma, {
      bufferSize: NOTIF_ALARM_SIZE,
      buffers: Math.min(alarmq.size, 16),
      log: this.core.log,
      onBuffer: (bytes) => {
        const clockId = decodeAlarmNotification(bytes);
        if (clockId === undefined) this.core.log.warn({ length: bytes.length }, 'rtc: ignoring an alarmq buffer that is not an alarm notification');
        else for (const l of [...this.alarmListeners]) l(clockId);
      },
    });
  }

  static async open(transport: DriverTransport, options: RtcDriverOptions = {}): Promise<RtcDriver> {
    const wantAlarm = options.alarm !== false;
    const core = await VirtioDriver.start(transport, {
      name: 'rtc',
      deviceId: DeviceId.RTC,
      features: FRAMEWORK_FEATURES | (wantAlarm ? featureMask([RtcFeature.ALARM]) : 0n),
      // The alarmq exists only once VIRTIO_RTC_F_ALARM is negotiated.
      queues: ({ features }) => (hasFeature(features, RtcFeature.ALARM) ? 2 : 1),
      queueSize: options.queueSize,
      log: options.log,
    });
    try {
      const requestq = core.queue(0);
      const probe = new RtcDriver(core, requestq, []);
      const numClocks = (await probe.request({ msgType: MsgType.CFG })).numClocks ?? 0;
      const clocks: ClockInfo[] = [];
      for (let id = 0; id < numClocks; id++) {
        const cap = await probe.request({ msgType: MsgType.CLOCK_CAP, clockId: id });
        clocks.push({ id, type: cap.clockType ?? 0, smearing: cap.smearing ?? 0, alarm: ((cap.flags ?? 0) & FLAG_ALARM_CAP) !== 0 });
      }
      const driver = new RtcDriver(core, requestq, clocks);
      if (hasFeature(core.features, RtcFeature.ALARM)) await driver.listenForAlarms();
      return driver;
    } catch (err) {
      await core.close();
      throw err;
    }
  }

  /** The first clock of `type` (a ClockType value), or undefined. */
  clockOf(type: number): ClockInfo | undefined {
    return this.clocks.find((c) => c.type === type);
  }

  /** Clock `clockId` now, in nanoseconds since its epoch. */
  async read(clockId: number): Promise<bigint> {
    return (await this.request({ msgType: MsgType.READ, clockId })).reading ?? 0n;
  }

  /**
   * How far clock `clockId` is ahead of `reference` (a local clock in the same timescale, e.g.
   * the host's CLOCK_REALTIME for a UTC clock): the reading minus the midpoint of the local reads
   * taken just before and after it, with half the round trip as the uncertainty.
   */
  async offset(clockId: number, reference: () => bigint): Promise<{ offsetNs: bigint; uncertaintyNs: bigint }> {
    const before = reference();
    const reading = await this.read(clockId);
    const after = reference();
    return { offsetNs: reading - (before + after) / 2n, uncertaintyNs: (after - before + 1n) / 2n };
  }

  /** Whether the device can cross-timestamp clock `clockId` with hardware counter `hwCounter`. */
  async crossTimestampSupported(clockId: number, hwCounter: number): Promise<boolean> {
    return (((await this.request({ msgType: MsgType.CROSS_CAP, clockId, hwCounter })).flags ?? 0) & FLAG_CROSS_CAP) !== 0;
  }

  async readAlarm(clockId: number): Promise<AlarmSetting> {
    const r = await this.request({ msgType: MsgType.READ_ALARM, clockId });
    return { time: r.alarmTime ?? 0n, enabled: ((r.flags ?? 0) & FLAG_ALARM_ENABLED) !== 0 };
  }

  /** Set the alarm of clock `clockId` to `time`, enabled unless `enabled` is false. */
  async setAlarm(clockId: number, time: bigint, enabled = true): Promise<void> {
    await this.request({ msgType: MsgType.SET_ALARM, clockId, alarmTime: time, flags: enabled ? FLAG_ALARM_ENABLED : 0 });
  }

  /** Enable or disable (cancel) the alarm of clock `clockId`, keeping its time. */
  async setAlarmEnabled(clockId: number, enabled: boolean): Promise<void> {
    await this.request({ msgType: MsgType.SET_ALARM_ENABLED, clockId, flags: enabled ? FLAG_ALARM_ENABLED : 0 });
  }

  /** Call `listener` with the clock id of every alarm notification. */
  onAlarm(listener: (clockId: number) => void): void {
    this.alarmListeners.push(listener);
  }

  /** The next alarm notification of clock `clockId`. */
  nextAlarm(clockId: number): Promise<void> {
    return new Promise((resolve) => {
      const listener = (id: number): void => {
        if (id !== clockId) return;
        this.alarmListeners.splice(this.alarmListeners.indexOf(listener), 1);
        resolve();
      };
      this.alarmListeners.push(listener);
    });
  }

  /** One request and its checked response. */
  async request(req: Partial<RtcRequest> & { readonly msgType: number }): Promise<RtcResponse> {
    const sizes = MESSAGE_SIZES.get(req.msgType);
    if (sizes === undefined) throw new RangeError(`rtc: no request type ${msgTypeName(req.msgType)}`);
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(sizes.request + sizes.response, 8);
    if (addr === undefined) throw new Error('rtc: DMA memory exhausted');
    try {
      memory.write(addr, encodeRequest(req));
      const respAddr = addr + sizes.request;
      memory.write(respAddr, new Uint8Array(sizes.response));
      const len = await this.requestq.submit([{ addr, len: sizes.request }], [{ addr: respAddr, len: sizes.response }]);
      const what = `${msgTypeName(req.msgType)}${req.msgType === MsgType.CFG ? '' : ` of clock ${req.clockId ?? 0}`}`;
      if (len < 1) throw new RtcError(`rtc: the device answered ${what} without a status`, undefined);
      const resp = decodeResponse(req.msgType, memory.slice(respAddr, sizes.response));
      if (resp.status !== RtcStatus.OK) throw new RtcError(`rtc: the device answered ${what} with ${STATUS_TEXT[resp.status] ?? `status ${resp.status}`}`, resp.status);
      if (len !== sizes.response) throw new RtcError(`rtc: the device answered ${what} with ${len} bytes, not ${sizes.response}`, undefined);
      return resp;
    } finally {
      dma.free(addr);
    }
  }

  async close(): Promise<void> {
    await this.core.close();
    await this.receiver?.stopped;
  }
}

/** A clock type's name as `paravirt` and logs print it. */
export function clockTypeName(type: number): string {
  const entry = Object.entries(ClockType).find(([, v]) => v === type);
  return entry ? entry[0] : `type ${type}`;
}
