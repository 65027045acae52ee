/**
 * virtio-balloon under the adversarial fuzzer (test/fuzz): probes are page-number buffers on the
 * inflate and deflate queues (§5.5.6.1), answered used with no bytes written. Inflate probes name
 * pages beyond guest RAM, which the device must refuse to release (a page inside RAM would be
 * zeroed, which may be the ring the fuzzer is attacking); deflate probes name any page.
 */
import type { FuzzProfile, ProbeSeed } from '../device-type.ts';
import { BalloonDevice } from './device.ts';
import { encodePfns } from './wire.ts';

function pfns(seed: ProbeSeed, first: number): Uint8Array {
  const count = 1 + (seed.fill % 16);
  return encodePfns(Array.from({ length: count }, (_, i) => (first + ((seed.a >>> 0) % 0x1000) + i * (1 + (seed.b % 7))) >>> 0));
}

function profile(name: string, queue: number, first: number): FuzzProfile {
  return {
    name,
    queue,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      return {
        device: new BalloonDevice({ maxQueueSize }),
        probe: (seed) => ({
          readable: pfns(seed, first),
          writable: 0,
          check: (_written, used) => (used === 0 ? undefined : `used length ${used} for a page-number buffer`),
        }),
        violation: () => undefined,
      };
    },
  };
}

/** Guest RAM under the fuzzer is far below 2^31 pages × 4 KiB (8 TiB). */
export const BALLOON_FUZZ: readonly FuzzProfile[] = [profile('balloon inflateq', 0, 0x8000_0000), profile('balloon deflateq', 1, 0)];
