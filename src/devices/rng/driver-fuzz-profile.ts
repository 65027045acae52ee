/** The rng driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): reads of any length. */
import type { DriverFuzzProfile } from '../device-type.ts';

export const RNG_DRIVER_FUZZ: DriverFuzzProfile = {
  features: 0n,
  queues: 1,
  config: () => new Uint8Array(0),
  async open(transport, log) {
    const { RngDriver } = await import('./driver.ts');
    // Small chunks, so one read spreads over several buffers in flight together.
    const driver = await RngDriver.open(transport, { log, chunkBytes: 512 });
    return { operate: (seed) => driver.read(seed.a % 2048), close: () => driver.close() };
  },
};
