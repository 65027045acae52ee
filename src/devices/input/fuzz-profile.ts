/**
 * virtio-input under the adversarial fuzzer (test/fuzz): the status queue, which the driver fills
 * with requests (§5.8.6.2), where a probe is an LED event read and returned with nothing written;
 * and the event queue (§5.8.6.1), where a probe is a buffer a key press must fill.
 */
import type { FuzzProfile, ProbeSeed } from '../device-type.ts';
import { EVENTQ, InputDevice, STATUSQ } from './device.ts';
import { inputProfile } from './profile.ts';
import { EvType, Led, encodeEvent } from './wire.ts';

export const INPUT_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'input statusq',
    queue: STATUSQ,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      return {
        device: new InputDevice(inputProfile('keyboard'), { maxQueueSize }),
        probe: (seed) => ({
          readable: encodeEvent({ type: EvType.LED, code: seed.choice % 3 === 0 ? Led.NUML : Led.CAPSL, value: seed.a & 1 }),
          writable: 0,
          check: (_written, used) => (used === 0 ? undefined : `used length ${used} for a status event, which the device only reads`),
        }),
        violation: () => undefined,
      };
    },
  },
  {
    name: 'input eventq',
    queue: EVENTQ,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      const device = new InputDevice(inputProfile('keyboard'), { maxQueueSize });
      // Keys 1 to 64 (KEY_ESC to KEY_F6), down or up; each goes as KEY then SYN_REPORT.
      const key = (seed: ProbeSeed): { code: number; down: boolean } => ({ code: 1 + (seed.a % 64), down: (seed.b & 1) === 1 });
      return {
        device,
        produce: (seed) => {
          const k = key(seed);
          device.key(k.code, k.down);
        },
        probe: (seed) => {
          const k = key(seed);
          const expected = encodeEvent({ type: EvType.KEY, code: k.code, value: k.down ? 1 : 0 });
          return {
            readable: new Uint8Array(0),
            writable: expected.length,
            deliver: () => void device.key(k.code, k.down),
            check: (written, used) =>
              used === expected.length && written.every((v, i) => v === expected[i]) ? undefined : `key event ${[...written].join(',')} with used length ${used}`,
          };
        },
        violation: () => undefined,
      };
    },
  },
];
