/**
 * The RTC device (VIRTIO 1.4, "RTC Device"): clocks the driver discovers (CFG, CLOCK_CAP,
 * CROSS_CAP) and reads (READ) on the requestq, and with VIRTIO_RTC_F_ALARM one alarm per clock
 * (READ_ALARM, SET_ALARM, SET_ALARM_ENABLED) whose expirations arrive as NOTIF_ALARM on the
 * alarmq, an event queue.
 *
 * Every request is answered in order with a status; an OK answer has exactly its type's response
 * size, an error answer only the response head (the driver reads nothing else of it). Requests
 * are the driver's and not trusted: a short or truncated request, a too-small response buffer,
 * an unknown message type, clock or flag bit is a status, never an exception.
 */
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE, hasFeature } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { EventQueue, ONE_PER_BUFFER } from '../../virtio/event-queue.ts';
import { FRAMEWORK_FEATURES, featureMask } from '../../virtio/features.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import { Alarm, type AlarmTimer } from './alarms.ts';
import type { RtcClock } from './clocks.ts';
import {
  FLAG_ALARM_CAP, FLAG_ALARM_ENABLED, HEAD_SIZE, HwCounter, MAX_REQUEST_SIZE, MESSAGE_SIZES, MsgType, NOTIF_ALARM_SIZE, RtcFeature, RtcStatus, U64_MAX,
  decodeRequest, encodeAlarmNotification, encodeResponse, type RtcRequest, type RtcResponse,
} from './wire.ts';

export const REQUESTQ = 0;
export const ALARMQ = 1;

export interface RtcDeviceOptions {
  /** The clocks, clock id = index; at most 65535 (num_clocks is an le16). */
  readonly clocks: readonly RtcClock[];
  /** Offer VIRTIO_RTC_F_ALARM, with an alarm on every clock (default false). */
  readonly alarm?: boolean;
  /** Largest queue size offered (default FRONT_END_MAX_QUEUE_SIZE: QEMU's vhost-user-rtc asks for 1024). */
  readonly maxQueueSize?: number;
  /** How alarms wait to look at their clocks again (default a real timer; alarms.ts). */
  readonly alarmTimer?: AlarmTimer;
}

/** Status of one answered request, counted by name. */
const STATUS_NAMES: Record<number, string> = {
  [RtcStatus.OK]: 'ok', [RtcStatus.EOPNOTSUPP]: 'eopnotsupp', [RtcStatus.ENODEV]: 'enodev', [RtcStatus.EINVAL]: 'einval', [RtcStatus.EIO]: 'eio',
};

export class RtcDevice implements VirtioDevice {
  readonly deviceId = DeviceId.RTC;
  readonly name = 'rtc';
  /** requestq, and alarmq which exists only once VIRTIO_RTC_F_ALARM is negotiated. */
  readonly numQueues = 2;
  readonly maxQueueSize: number;
  readonly features: bigint;
  /** "Device configuration layout": none. */
  readonly config = new Uint8Array(0);
  readonly counters: DeviceCounters;
  private readonly clocks: readonly RtcClock[];
  private readonly alarms: readonly Alarm[] | undefined;
  private readonly answered: Record<string, number> = { ok: 0, eopnotsupp: 0, enodev: 0, einval: 0, eio: 0 };
  private alarmsExpired = 0;
  private alarmsWithdrawn = 0;
  private server: QueueServer | undefined;
  private notifications: EventQueue<Uint8Array> | undefined;
  private alarmNegotiated = false;

  constructor(options: RtcDeviceOptions) {
    if (options.clocks.length > 0xffff) throw new RangeError(`${options.clocks.length} clocks are more than num_clocks (le16) can count`);
    this.clocks = options.clocks;
    this.maxQueueSize = options.maxQueueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    this.features = FRAMEWORK_FEATURES | (options.alarm === true ? featureMask([RtcFeature.ALARM]) : 0n);
    this.alarms = options.alarm === true ? this.clocks.map((c, id) => new Alarm(c, () => this.expired(id), options.alarmTimer)) : undefined;
    this.counters = new DeviceCounters(this.numQueues, () => ({
      ...Object.fromEntries(Object.entries(this.answered).map(([k, v]) => [`status_${k}`, v])),
      alarms_expired: this.alarmsExpired,
      alarm_notifications_withdrawn: this.alarmsWithdrawn,
    }));
  }

  activate(ctx: DeviceContext): void {
    this.alarmNegotiated = this.alarms !== undefined && hasFeature(ctx.features, RtcFeature.ALARM);
    this.server = new QueueServer(ctx, REQUESTQ, (req) => this.serve(req));
    if (this.alarmNegotiated) {
      // At most one waiting notification per clock: a newer expiration withdraws the older one.
      this.notifications = new EventQueue(ctx, ALARMQ, {
        layout: ONE_PER_BUFFER,
        backlog: this.clocks.length,
        overflow: 'drop',
        minBuffer: { bytes: NOTIF_ALARM_SIZE, rule: 'alarmq buffer smaller than virtio_rtc_notif_alarm' },
      });
    }
  }

  queueNotify(index: number): void {
    if (index === REQUESTQ) this.server?.kick();
    else if (index === ALARMQ) this.notifications?.kick();
  }

  reset(): void {
    this.server = undefined;
    this.notifications = undefined;
    this.alarmNegotiated = false;
    for (const a of this.alarms ?? []) a.clear();
  }

  /** Stop every alarm's timer: the device is going away. */
  close(): void {
    this.reset();
  }

  /**
   * The host sets clock `clockId`'s alarm as a driver's SET_ALARM would (a host waking its guest at
   * a time of its choosing): a time the clock has reached expires at once, and the driver reads
   * the alarm back with READ_ALARM. False when no running driver negotiated VIRTIO_RTC_F_ALARM
   * or the clock does not exist.
   */
  setAlarm(clockId: number, time: bigint, enabled: boolean): boolean {
    if (time < 0n || time > U64_MAX) throw new RangeError(`alarm time ${time} is outside the le64 range`);
    const alarm = this.alarmNegotiated ? this.alarms?.[clockId] : undefined;
    if (alarm === undefined) return false;
    this.withdraw(clockId);
    alarm.set(time, enabled);
    return true;
  }

  /** An alarm of clock `id` expired: one notification, replacing any still waiting for it. */
  private expired(id: number): void {
    this.alarmsExpired++;
    this.withdraw(id);
    this.notifications?.offer(encodeAlarmNotification(id));
  }

  private withdraw(id: number): void {
    const mine = encodeAlarmNotification(id);
    this.alarmsWithdrawn += this.notifications?.withdraw((n) => n[8] === mine[8] && n[9] === mine[9]) ?? 0;
  }

  private serve(req: Request): void {
    // Bytes past the longest request are ignored, as the spec has the device ignore extra space.
    const bytes = new Uint8Array(Math.min(req.reader.remaining, MAX_REQUEST_SIZE));
    req.reader.read(bytes);
    const { msgType, size, response } = this.answer(bytes, req.writer.remaining);
    this.answered[STATUS_NAMES[response.status]]++;
    if (response.status !== RtcStatus.OK) this.counters.queue(REQUESTQ).errors++;
    req.writer.write(encodeResponse(msgType, size, response));
  }

  /**
   * The response to a request whose first bytes are `bytes`, and its size: the type's response
   * size, or for an error only the head.
   */
  private answer(bytes: Uint8Array, writable: number): Answer {
    // "Device Operation": EINVAL when the request does not fit the readable part, or the
    // response the writable part; EOPNOTSUPP for a type the spec does not describe.
    if (bytes.length < HEAD_SIZE) return fail(RtcStatus.EINVAL);
    const req = decodeRequest(bytes);
    const sizes = MESSAGE_SIZES.get(req.msgType);
    if (sizes === undefined) return fail(RtcStatus.EOPNOTSUPP);
    if (bytes.length < sizes.request || writable < sizes.response) return fail(RtcStatus.EINVAL);
    const response = this.execute(req);
    return response.status === RtcStatus.OK ? { msgType: req.msgType, size: sizes.response, response } : fail(response.status);
  }

  private execute(req: RtcRequest): RtcResponse {
    if (req.msgType === MsgType.CFG) return { status: RtcStatus.OK, numClocks: this.clocks.length };
    const clock = this.clocks[req.clockId];
    if (clock === undefined) return { status: RtcStatus.ENODEV };
    switch (req.msgType) {
      case MsgType.CLOCK_CAP:
        return { status: RtcStatus.OK, clockType: clock.type, smearing: clock.smearing, flags: this.alarmNegotiated ? FLAG_ALARM_CAP : 0 };
      case MsgType.CROSS_CAP:
        // A process on the host cannot tell what the guest's TSC or virtual counter read at the
        // instant it read a clock (the VMM owns their offsets and scaling): no cross-timestamp,
        // for any counter the spec names. Other counters are unknown (EOPNOTSUPP).
        return isKnownCounter(req.hwCounter) ? { status: RtcStatus.OK, flags: 0 } : { status: RtcStatus.EOPNOTSUPP };
      case MsgType.READ:
        return { status: RtcStatus.OK, reading: clock.read() };
      case MsgType.READ_CROSS:
        return { status: RtcStatus.EOPNOTSUPP };
      default:
        return this.alarmRequest(req);
    }
  }

  /** READ_ALARM, SET_ALARM, SET_ALARM_ENABLED ("Alarm Control Requests"). */
  private alarmRequest(req: RtcRequest): RtcResponse {
    // Without VIRTIO_RTC_F_ALARM negotiated the alarm messages answer ENODEV.
    const alarm = this.alarmNegotiated ? this.alarms?.[req.clockId] : undefined;
    if (alarm === undefined) return { status: RtcStatus.ENODEV };
    if (req.msgType === MsgType.READ_ALARM) {
      return { status: RtcStatus.OK, alarmTime: alarm.time, flags: alarm.enabled ? FLAG_ALARM_ENABLED : 0 };
    }
    // A flag the spec does not define is a value it does not allow.
    if ((req.flags & ~FLAG_ALARM_ENABLED) !== 0) return { status: RtcStatus.EINVAL };
    // Setting or disabling an alarm makes a waiting expiration obsolete; disabling must stop it
    // before the buffer is used, which this does, since the answer is written after.
    this.withdraw(req.clockId);
    const enable = (req.flags & FLAG_ALARM_ENABLED) !== 0;
    if (req.msgType === MsgType.SET_ALARM) alarm.set(req.alarmTime, enable);
    else alarm.setEnabled(enable);
    return { status: RtcStatus.OK };
  }
}

interface Answer {
  readonly msgType: number;
  readonly size: number;
  readonly response: RtcResponse;
}

/** An error's answer is the response head alone: the driver reads nothing else of it. */
function fail(status: number): Answer {
  return { msgType: 0, size: HEAD_SIZE, response: { status } };
}

function isKnownCounter(counter: number): boolean {
  return counter === HwCounter.ARM_VCT || counter === HwCounter.X86_TSC || counter === HwCounter.INVALID;
}
