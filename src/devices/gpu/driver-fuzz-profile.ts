/**
 * The gpu driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): display
 * queries and surfaces. An honest device answers every command with an OK_NODATA header carrying
 * the command's flags and fence back, and zeros after it (no display enabled, an empty EDID).
 */
import { featureMask } from '../../virtio/features.ts';
import type { DriverFuzzProfile } from '../device-type.ts';
import { CTRL_HDR_SIZE, GPU_CONFIG, GpuFeature, GpuResp } from './wire.ts';

export const GPU_DRIVER_FUZZ: DriverFuzzProfile = {
  features: featureMask([GpuFeature.EDID]),
  queues: 2,
  config: (seed) => GPU_CONFIG.encode({ eventsRead: seed.choice % 2, eventsClear: 0, numScanouts: 1 + (seed.a % 16), numCapsets: 0 }),
  async open(transport, log) {
    const { GpuDriver } = await import('./driver.ts');
    const driver = await GpuDriver.open(transport, { log });
    return {
      async operate(seed) {
        switch (seed.choice % 4) {
          case 0:
            return driver.displayInfo();
          case 1:
            return driver.edid(seed.a % 17);
          case 2: {
            const surface = await driver.createSurface(1 + (seed.a % 64), 1 + (seed.b % 64));
            await driver.setScanout(0, surface);
            return driver.update(surface);
          }
          default:
            return driver.moveCursor(seed.a % 2, seed.b, seed.fill);
        }
      },
      close: () => driver.close(),
    };
  },
  respond(_queue, readable, writable) {
    const reply = new Uint8Array(writable);
    reply.set(readable.subarray(0, Math.min(CTRL_HDR_SIZE, writable)));
    if (writable >= 4) new DataView(reply.buffer).setUint32(0, GpuResp.OK_NODATA, true);
    return reply;
  },
};
