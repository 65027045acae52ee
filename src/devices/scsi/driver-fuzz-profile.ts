/**
 * The scsi driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): commands
 * with data in, data out or none, and task management, to LUNs that may or may not exist.
 */
import { featureMask } from '../../virtio/features.ts';
import type { DriverFuzzProfile } from '../device-type.ts';
import { SCSI_CONFIG, ScsiFeature } from './wire.ts';

export const SCSI_DRIVER_FUZZ: DriverFuzzProfile = {
  features: featureMask(Object.values(ScsiFeature)),
  // The control queue, the event queue, one request queue.
  queues: 3,
  config: (seed) =>
    SCSI_CONFIG.encode({
      numQueues: 1,
      segMax: 1 + (seed.a % 16),
      maxSectors: 8 + (seed.b % 1024),
      cmdPerLun: 8,
      eventInfoSize: 16,
      senseSize: 96,
      cdbSize: 32,
      maxChannel: 0,
      maxTarget: seed.choice % 3,
      maxLun: seed.fill % 4,
    }),
  async open(transport, log) {
    const { ScsiDriver } = await import('./driver.ts');
    const driver = await ScsiDriver.open(transport, { log });
    return {
      async operate(seed) {
        const address = { target: seed.a % 3, lun: seed.fill % 5 };
        switch (seed.choice % 4) {
          case 0:
            // INQUIRY, allocation length b.
            return driver.command(address, Uint8Array.of(0x12, 0, 0, (seed.b >> 8) & 0xff, seed.b & 0xff, 0), { dataInLength: seed.b % 600 });
          case 1:
            // WRITE(10) of one block at LBA b.
            return driver.command(address, Uint8Array.of(0x2a, 0, 0, 0, seed.b >> 8, seed.b & 0xff, 0, 0, 1, 0), { dataOut: new Uint8Array(512).fill(seed.fill) });
          case 2:
            // TEST UNIT READY.
            return driver.command(address, new Uint8Array(6));
          default:
            return driver.taskManagement(seed.b % 8, address, BigInt(seed.b));
        }
      },
      close: () => driver.close(),
    };
  },
};
