/** The rtc driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): clock reads and alarms. */
import { featureMask } from '../../virtio/features.ts';
import type { DriverFuzzProfile } from '../device-type.ts';
import { RtcFeature } from './wire.ts';

export const RTC_DRIVER_FUZZ: DriverFuzzProfile = {
  features: featureMask(Object.values(RtcFeature)),
  queues: 2,
  config: () => new Uint8Array(0),
  async open(transport, log) {
    const { RtcDriver } = await import('./driver.ts');
    const driver = await RtcDriver.open(transport, { log });
    return {
      async operate(seed) {
        const clock = seed.a % 4;
        switch (seed.choice % 4) {
          case 0:
            return driver.read(clock);
          case 1:
            return driver.readAlarm(clock);
          case 2:
            return driver.setAlarm(clock, BigInt(seed.b) * 1_000_000n, seed.fill % 2 === 0);
          default:
            return driver.crossTimestampSupported(clock, seed.b % 4);
        }
      },
      close: () => driver.close(),
    };
  },
};
