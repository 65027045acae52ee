/**
 * The blk driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): reads,
 * writes, flushes and GET_ID near the end of a small disk, answered by an honest device with
 * VIRTIO_BLK_S_OK in the status byte (the last writable one) unless the fuzzer lies.
 */
import { featureMask } from '../../virtio/features.ts';
import type { DriverFuzzProfile } from '../device-type.ts';
import { BLK_CONFIG, BlkFeature, BlkStatus } from './wire.ts';

/** Sectors of the honest disk. */
const CAPACITY = 64;

export const BLK_DRIVER_FUZZ: DriverFuzzProfile = {
  features: featureMask(Object.values(BlkFeature)),
  queues: 2,
  config(seed) {
    const bytes = new Uint8Array(BLK_CONFIG.size);
    const view = new DataView(bytes.buffer);
    view.setBigUint64(BLK_CONFIG.offset.capacity, BigInt(CAPACITY), true);
    view.setUint32(BLK_CONFIG.offset.sizeMax, 512 << (seed.a % 4), true);
    view.setUint32(BLK_CONFIG.offset.segMax, 1 + (seed.b % 8), true);
    view.setUint32(BLK_CONFIG.offset.blkSize, 512, true);
    // Now and then the most queues num_queues can claim: the driver still sets up a few.
    view.setUint16(BLK_CONFIG.offset.numQueues, seed.choice === 15 ? 0xffff : 1 + (seed.choice % 2), true);
    return bytes;
  },
  async open(transport, log) {
    const { BlkDriver } = await import('./driver.ts');
    const driver = await BlkDriver.open(transport, { log });
    return {
      async operate(seed) {
        const sector = seed.a % (CAPACITY + 2);
        const bytes = 512 * (1 + (seed.b % 4));
        switch (seed.choice % 4) {
          case 0:
            return driver.read(sector, bytes);
          case 1:
            return driver.write(sector, new Uint8Array(bytes).fill(seed.fill));
          case 2:
            return driver.flush();
          default:
            return driver.getId();
        }
      },
      close: () => driver.close(),
    };
  },
  respond(_queue, _readable, writable, seed) {
    const reply = new Uint8Array(writable).fill(seed.fill);
    if (writable > 0) reply[writable - 1] = BlkStatus.OK;
    return reply;
  },
};
