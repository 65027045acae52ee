/**
 * The net driver under the hostile-device fuzzer (test/fuzz/driver-adversarial.ts): frames sent
 * (one at a time, or a burst written in place), frames awaited, receive-mode commands on the
 * control queue. An honest device acknowledges a command (one writable byte) with VIRTIO_NET_OK
 * and fills a receive buffer with a plain header and a minimal frame, unless the fuzzer lies.
 */
import { featureMask } from '../../virtio/features.ts';
import type { DriverFuzzProfile } from '../device-type.ts';
import { NET_CONFIG, NET_HDR_SIZE, NetFeature, NetStatus } from './wire.ts';

/** The smallest Ethernet frame without its FCS. */
const MIN_FRAME = 60;

export const NET_DRIVER_FUZZ: DriverFuzzProfile = {
  features: featureMask(Object.values(NetFeature)),
  // One pair and the control queue.
  queues: 3,
  config(seed) {
    const bytes = new Uint8Array(NET_CONFIG.size);
    const view = new DataView(bytes.buffer);
    bytes.set([0x52, 0x54, 0, 0x12, 0x34, seed.fill], NET_CONFIG.offset.mac);
    view.setUint16(NET_CONFIG.offset.status, seed.choice % 4 === 0 ? 0 : NetStatus.LINK_UP, true);
    view.setUint16(NET_CONFIG.offset.maxVirtqueuePairs, 1, true);
    view.setUint16(NET_CONFIG.offset.mtu, 68 + (seed.a % 9000), true);
    return bytes;
  },
  async open(transport, log) {
    const { NetDriver } = await import('./driver.ts');
    const driver = await NetDriver.open(transport, { log });
    return {
      async operate(seed) {
        switch (seed.choice % 5) {
          case 0:
          case 1:
            return driver.send(new Uint8Array(14 + (seed.a % 1500)).fill(seed.fill));
          case 2:
            return driver.next();
          case 3: {
            // A burst written in place (RequestQueue.startReadable), or a wait for room.
            const sent = driver.trySendBurst(1 + (seed.b % 32), MIN_FRAME, (buffer) => buffer.fill(seed.fill, 0, MIN_FRAME));
            return sent > 0 ? undefined : driver.whenWritable();
          }
          default:
            return driver.setPromiscuous(seed.b % 2 === 0);
        }
      },
      close: () => driver.close(),
    };
  },
  respond(_queue, _readable, writable, seed) {
    if (writable === 1) return new Uint8Array([0]);
    // A receive buffer: a header saying nothing (one buffer, no offload) and a frame.
    const reply = new Uint8Array(Math.min(writable, NET_HDR_SIZE + MIN_FRAME)).fill(seed.fill);
    reply.fill(0, 0, NET_HDR_SIZE);
    return reply;
  },
};
