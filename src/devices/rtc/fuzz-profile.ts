/** virtio-rtc under the adversarial fuzzer (test/fuzz): a probe is a READ of a fixed clock, or a CFG. */
import type { FuzzProfile } from '../device-type.ts';
import type { RtcClock } from './clocks.ts';
import { RtcDevice } from './device.ts';
import { ClockType, MESSAGE_SIZES, MsgType, RtcStatus, Smear, decodeResponse, encodeRequest } from './wire.ts';

/** A clock that always reads the same, so a probe knows the answer. */
const FIXED: RtcClock = { name: 'fixed', type: ClockType.TAI, smearing: Smear.UNSPECIFIED, read: () => 123_456_789n, hostDelay: () => 0n };

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
];
