/**
 * The console driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): port 0
 * and port 1 of a MULTIPORT device, written to, opened, asked for, and control messages sent.
 */
import { featureMask } from '../../virtio/features.ts';
import type { DriverFuzzProfile } from '../device-type.ts';
import { CONSOLE_CONFIG, ConsoleFeature, ControlEvent } from './wire.ts';

export const CONSOLE_DRIVER_FUZZ: DriverFuzzProfile = {
  features: featureMask(Object.values(ConsoleFeature)),
  // Port 0's pair, the control pair, port 1's pair.
  queues: 6,
  // Now and then the most ports max_nr_ports can claim: the driver still sets up queues for a few.
  config: (seed) => CONSOLE_CONFIG.encode({ cols: seed.a % 300, rows: seed.b % 100, maxNrPorts: seed.choice === 15 ? 0xffff_ffff : 2, emergWr: 0 }),
  async open(transport, log) {
    const { ConsoleDriver } = await import('./driver.ts');
    const driver = await ConsoleDriver.open(transport, { log, bufferSize: 64 });
    return {
      async operate(seed) {
        const id = seed.a % 2;
        switch (seed.choice % 4) {
          case 0:
            return driver.transmit(id, new Uint8Array(seed.b % 300).fill(seed.fill));
          case 1:
            return driver.sendControl(id, ControlEvent.PORT_OPEN, seed.b % 2);
          case 2:
            return driver.consolePort();
          default:
            return driver.port(`port${id}`);
        }
      },
      close: () => driver.close(),
    };
  },
};
