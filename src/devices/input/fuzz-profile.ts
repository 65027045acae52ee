/**
 * virtio-input under the adversarial fuzzer (test/fuzz): the status queue is the one the driver
 * fills with requests (§5.8.6.2); a probe is an LED event, read and returned with nothing written.
 */
import type { FuzzProfile } from '../device-type.ts';
import { InputDevice, STATUSQ } from './device.ts';
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
];
