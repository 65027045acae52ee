/** virtio-rng under the adversarial fuzzer (test/fuzz): a probe is a buffer to fill (§5.4.6.1). */
import type { FuzzProfile } from '../device-type.ts';
import { RngDevice } from './device.ts';

export const RNG_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'rng requestq',
    queue: 0,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      return {
        device: new RngDevice({ maxQueueSize }),
        probe: (seed) => ({
          readable: new Uint8Array(0),
          writable: seed.fill,
          // §5.4.6.1: one or more bytes, never more than the buffer.
          check: (_written, used) => (used >= 1 && used <= seed.fill ? undefined : `used length ${used} for a ${seed.fill}-byte buffer`),
        }),
        violation: () => undefined,
      };
    },
  },
];
