/**
 * The vsock driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): stream and
 * SEQPACKET connections to host ports, whose answers (RESPONSE, RST, data, credit) come from
 * whatever the device writes into the receive buffers.
 */
import type { Duplex } from 'node:stream';
import { featureMask } from '../../virtio/features.ts';
import type { DriverFuzzProfile } from '../device-type.ts';
import { VSOCK_CONFIG, VsockFeature } from './wire.ts';

export const VSOCK_DRIVER_FUZZ: DriverFuzzProfile = {
  features: featureMask(Object.values(VsockFeature)),
  // rx, tx, event.
  queues: 3,
  config: (seed) => VSOCK_CONFIG.encode({ guest_cid: 3 + seed.a }),
  async open(transport, log) {
    const { VsockDriver } = await import('./driver.ts');
    const driver = await VsockDriver.open(transport, { log });
    /** A connection made, written to and ended: it settles when the host answers or the driver closes. */
    const use = async (connecting: Promise<Duplex>, bytes: number): Promise<void> => {
      const socket = await connecting;
      socket.on('error', () => {});
      socket.end(new Uint8Array(bytes));
    };
    return {
      async operate(seed) {
        const port = seed.b % 4;
        return seed.choice % 2 === 0 ? use(driver.connect(port), seed.a % 600) : use(driver.connectSeqpacket(port), seed.a % 600);
      },
      close: () => driver.close(),
    };
  },
};
