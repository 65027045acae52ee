/**
 * virtio-vsock under the adversarial fuzzer (test/fuzz): the tx queue, whose packets the device
 * reads and returns with nothing written (§5.10.6.2); a probe is a credit request for a
 * connection that does not exist, which the device answers on the rx queue, not in the buffer.
 */
import type { FuzzProfile } from '../device-type.ts';
import { VsockDevice } from './device.ts';
import { HOST_CID, Op, SocketType, TXQ, encodeHeader } from './wire.ts';

const GUEST_CID = 3;

export const VSOCK_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'vsock txq',
    queue: TXQ,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      const device = new VsockDevice({ guestCid: GUEST_CID, maxQueueSize, host: { connect: () => Promise.reject(new Error('no host listeners in the fuzzer')) } });
      return {
        device,
        probe: (seed) => ({
          readable: encodeHeader({
            srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: seed.a >>> 0, dstPort: seed.b >>> 0, len: 0,
            type: SocketType.STREAM, op: Op.CREDIT_REQUEST, flags: 0, bufAlloc: 0, fwdCnt: 0,
          }),
          writable: 0,
          check: (_written, used) => (used === 0 ? undefined : `used length ${used} for a tx packet, which the device only reads`),
        }),
        violation: () => undefined,
      };
    },
  },
];
