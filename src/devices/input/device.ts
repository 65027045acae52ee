/**
 * The input device (§5.8): the host offers evdev events, which go to the driver through the
 * event queue one per buffer; the driver sends LED state back on the status queue. The
 * configuration space answers the driver's select/subsel questions from an InputProfile.
 *
 * Events come in groups closed by SYN_REPORT (evdev's framing): a group is queued whole or
 * dropped whole, so the guest never sees half a key press. Events offered while no driver is
 * running, or while the guest has posted no buffers and the backlog is full, are dropped and
 * counted (§5.8.6 leaves it to the device; a keyboard that types stale keys later is worse).
 */
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { EventQueue, ONE_PER_BUFFER } from '../../virtio/event-queue.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import { configAnswer, type InputProfile, profileErrors } from './profile.ts';
import { EVENT_BYTES, EvType, INPUT_CONFIG, type InputEvent, SYN_REPORT, decodeEvent, encodeEvent } from './wire.ts';

export const EVENTQ = 0;
export const STATUSQ = 1;

export interface InputDeviceOptions {
  readonly maxQueueSize?: number;
  /** Events kept while the guest has no buffer posted (default 256). */
  readonly backlog?: number;
  /** An event the driver sent on the status queue (an LED turned on or off). */
  readonly onStatus?: (event: InputEvent) => void;
}

const SYN: InputEvent = { type: EvType.SYN, code: SYN_REPORT, value: 0 };

export class InputDevice implements VirtioDevice {
  readonly deviceId = DeviceId.INPUT;
  readonly name = 'input';
  /** §5.8.2: eventq and statusq. */
  readonly numQueues = 2;
  readonly maxQueueSize: number;
  /** §5.8.3: no device-specific features. */
  readonly features = FRAMEWORK_FEATURES;
  readonly config = new Uint8Array(INPUT_CONFIG.size);
  readonly counters: DeviceCounters;
  private readonly backlog: number;
  private events: EventQueue<Uint8Array> | undefined;
  private status: QueueServer | undefined;
  private readonly leds = new Map<number, number>();
  private readonly drops = { noDriver: 0, noBuffer: 0, tooLarge: 0, badStatus: 0 };
  private sent = 0;

  constructor(
    readonly profile: InputProfile,
    private readonly options: InputDeviceOptions = {},
  ) {
    const errors = profileErrors(profile);
    if (errors.length > 0) throw new RangeError(`input profile ${profile.kind}: ${errors.join('; ')}`);
    this.maxQueueSize = options.maxQueueSize ?? FRONT_END_MAX_QUEUE_SIZE;
    this.backlog = options.backlog ?? 256;
    if (!Number.isSafeInteger(this.backlog) || this.backlog < 2) throw new RangeError(`backlog ${this.backlog} must be an integer of at least 2 (an event and its SYN_REPORT)`);
    this.counters = new DeviceCounters(2, () => ({
      eventsSent: this.sent,
      droppedNoDriver: this.drops.noDriver,
      droppedNoBuffer: this.drops.noBuffer,
      droppedTooLarge: this.drops.tooLarge,
      badStatusEvents: this.drops.badStatus,
    }));
  }

  /** LED state the driver last reported, by LED code (§5.8.6.2). */
  get ledState(): ReadonlyMap<number, number> {
    return this.leds;
  }

  /** Events waiting for the guest to post buffers. */
  get waiting(): number {
    return this.events?.waiting ?? 0;
  }

  /**
   * Queue `events` followed by SYN_REPORT, whole or not at all. False when they were dropped
   * (no driver, or a full backlog): counted, never half-delivered.
   */
  send(events: readonly InputEvent[]): boolean {
    const group = [...events, SYN];
    const queue = this.events;
    if (queue === undefined) {
      this.drops.noDriver += group.length;
      return false;
    }
    if (queue.waiting + group.length > this.backlog) {
      this.drops.noBuffer += group.length;
      return false;
    }
    for (const e of group) queue.offer(encodeEvent(e));
    this.sent += group.length;
    return true;
  }

  /** A key (or button) going down or up, as one group. */
  key(code: number, down: boolean): boolean {
    return this.send([{ type: EvType.KEY, code, value: down ? 1 : 0 }]);
  }

  /** The driver wrote select or subsel (§5.8.5.1): answer in size and u. */
  configWritten(offset: number, length: number): void {
    if (!INPUT_CONFIG.touches('select', offset, length) && !INPUT_CONFIG.touches('subsel', offset, length)) return;
    const select = INPUT_CONFIG.get(this.config, 'select');
    const subsel = INPUT_CONFIG.get(this.config, 'subsel');
    const answer = configAnswer(this.profile, select, subsel);
    INPUT_CONFIG.encode({ select, subsel, size: answer.length, u: answer }, this.config);
  }

  activate(ctx: DeviceContext): void {
    this.events = new EventQueue(ctx, EVENTQ, {
      layout: ONE_PER_BUFFER,
      backlog: this.backlog,
      overflow: 'drop',
      // §5.8.6.1: the driver fills the eventq with buffers of virtio_input_event.
      minBuffer: { bytes: EVENT_BYTES, rule: '§5.8.6.1: an eventq buffer holds a virtio_input_event' },
      onDrop: (_e, reason) => this.drops[reason]++,
    });
    this.status = new QueueServer(ctx, STATUSQ, (req) => this.statusEvent(req));
  }

  queueNotify(index: number): void {
    if (index === EVENTQ) this.events?.kick();
    else if (index === STATUSQ) this.status?.kick();
  }

  reset(): void {
    this.events = undefined;
    this.status = undefined;
    INPUT_CONFIG.encode({ select: 0, subsel: 0, size: 0, u: new Uint8Array(0) }, this.config);
  }

  /**
   * §5.8.6.2: the driver sends events of the types it may (EV_LED for a keyboard's locks) on the
   * statusq; the device reads them and returns the buffer. A short buffer or an LED the profile
   * does not have is counted and ignored: the driver is not ours to fail over a lamp.
   */
  private statusEvent(req: Request): void {
    const event = decodeEvent(req.reader.readExact(EVENT_BYTES) ?? new Uint8Array(0));
    const leds = this.profile.events.get(EvType.LED) ?? [];
    if (event === undefined || (event.type === EvType.LED && !leds.includes(event.code))) {
      this.drops.badStatus++;
      return;
    }
    if (event.type === EvType.LED) this.leds.set(event.code, event.value === 0 ? 0 : 1);
    this.options.onStatus?.(event);
  }
}
