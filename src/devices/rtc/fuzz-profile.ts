/**
 * virtio-rtc under the adversarial fuzzer (test/fuzz): the requestq, where a probe is a READ of a
 * fixed clock or a CFG; and the alarmq (an event queue), where a probe is a buffer an alarm's
 * expiration must fill with its NOTIF_ALARM. The fuzzer's driver runs the alarmq alone, so the
 * host sets the alarms (RtcDevice.setAlarm) to a time already reached, which expires at once;
 * their timers never fire, so nothing of a case waits on the event loop's clock.
 */
import type { FuzzProfile, ProbeSeed } from '../device-type.ts';
import type { AlarmTimer } from './alarms.ts';
import type { RtcClock } from './clocks.ts';
import { ALARMQ, RtcDevice } from './device.ts';
import { ClockType, MESSAGE_SIZES, MsgType, NOTIF_ALARM_SIZE, RtcStatus, Smear, decodeResponse, encodeAlarmNotification, encodeRequest } from './wire.ts';

/** A clock that always reads the same, so a probe knows the answer. */
const FIXED: RtcClock = { name: 'fixed', type: ClockType.TAI, smearing: Smear.UNSPECIFIED, read: () => 123_456_789n, hostDelay: () => 0n };

/** An alarm timer that never fires: the clocks are fixed, and the host sets the alarms. */
const NEVER: AlarmTimer = { after: () => () => {} };

/** Clocks with an alarm each, so expirations of different clocks wait side by side. */
const ALARM_CLOCKS = 3;

const alarmClock = (seed: ProbeSeed): number => seed.a % ALARM_CLOCKS;

export const RTC_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'rtc requestq',
    queue: 0,
    minQueueSize: 2,
    create({ maxQueueSize }) {
      return {
        device: new RtcDevice({ clocks: [FIXED], alarm: true, maxQueueSize }),
        probe: (seed) => {
          const msgType = seed.choice % 2 === 0 ? MsgType.READ : MsgType.CFG;
          const size = MESSAGE_SIZES.get(msgType)!.response;
          return {
            readable: encodeRequest({ msgType, clockId: 0 }),
            writable: size,
            check: (written, used) => {
              if (used !== size) return `used length ${used}, not ${size}`;
              const r = decodeResponse(msgType, written);
              if (r.status !== RtcStatus.OK) return `status ${r.status}`;
              if (msgType === MsgType.READ && r.reading !== 123_456_789n) return `reading ${r.reading}`;
              if (msgType === MsgType.CFG && r.numClocks !== 1) return `num_clocks ${r.numClocks}`;
              return undefined;
            },
          };
        },
        violation: () => undefined,
      };
    },
  },
  {
    name: 'rtc alarmq',
    queue: ALARMQ,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      const device = new RtcDevice({ clocks: Array.from({ length: ALARM_CLOCKS }, () => FIXED), alarm: true, maxQueueSize, alarmTimer: NEVER });
      // An alarm time the fixed clocks passed long ago: setting it is an expiration.
      const expire = (clock: number): void => void device.setAlarm(clock, 1n, true);
      return {
        device,
        produce: (seed) => expire(alarmClock(seed)),
        probe: (seed) => {
          const clock = alarmClock(seed);
          const expected = encodeAlarmNotification(clock);
          return {
            readable: new Uint8Array(0),
            writable: NOTIF_ALARM_SIZE,
            deliver: () => expire(clock),
            check: (written, used) =>
              used === NOTIF_ALARM_SIZE && written.every((v, i) => v === expected[i]) ? undefined : `alarm notification ${[...written].join(',')} with used length ${used}, expected clock ${clock}'s`,
          };
        },
        violation: () => undefined,
      };
    },
  },
];
