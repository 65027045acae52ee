/**
 * The balloon driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): a target
 * it follows, pages taken back (DEFLATE_ON_OOM) and free ranges reported, statistics answered.
 */
import { featureMask } from '../../virtio/features.ts';
import type { DriverFuzzProfile } from '../device-type.ts';
import { BALLOON_CONFIG, BALLOON_PAGE_SIZE, BalloonFeature } from './wire.ts';

export const BALLOON_DRIVER_FUZZ: DriverFuzzProfile = {
  features: featureMask(Object.values(BalloonFeature)),
  // inflateq, deflateq, statsq, free_page_vq, reporting_vq.
  queues: 5,
  config: (seed) => BALLOON_CONFIG.encode({ numPages: seed.a % 96, actual: 0, freePageHintCmdId: 0, poisonVal: 0 }),
  async open(transport, log) {
    const { BalloonDriver } = await import('./driver.ts');
    const driver = await BalloonDriver.open(transport, { log, stats: () => [{ tag: 4, value: 1 << 20 }] });
    return {
      async operate(seed) {
        switch (seed.choice % 3) {
          case 0:
            return driver.reclaim(seed.a % 100);
          case 1:
            return driver.settled();
          default: {
            const { dma } = transport;
            const addr = dma.alloc(BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE);
            if (addr === undefined) return undefined;
            try {
              return await driver.reportFree([{ addr, len: BALLOON_PAGE_SIZE }]);
            } finally {
              dma.free(addr);
            }
          }
        }
      },
      close: () => driver.close(),
    };
  },
};
