/** The input driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): LED status events and reading events. */
import { once } from 'node:events';
import type { DriverFuzzProfile } from '../device-type.ts';
import { INPUT_CONFIG } from './wire.ts';

export const INPUT_DRIVER_FUZZ: DriverFuzzProfile = {
  features: 0n,
  // eventq, statusq.
  queues: 2,
  // Whatever is selected, an answer of `size` bytes of `fill`.
  config: (seed) => INPUT_CONFIG.encode({ select: 0, subsel: 0, size: seed.a % 129, u: new Uint8Array(128).fill(seed.fill) }),
  async open(transport, log) {
    const { InputDriver } = await import('./driver.ts');
    const driver = await InputDriver.open(transport, { log, highWaterMark: 16 });
    return {
      async operate(seed) {
        if (seed.choice % 2 === 0) return driver.setLed(seed.a % 16, seed.b % 2 === 0);
        // One event, or the end of the stream once the driver is closed.
        const { events } = driver;
        const event: unknown = events.read();
        if (event !== null || events.readableEnded) return event;
        return Promise.race([once(events, 'readable'), once(events, 'end')]);
      },
      close: () => driver.close(),
    };
  },
};
