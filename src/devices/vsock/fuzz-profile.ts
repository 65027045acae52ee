/**
 * virtio-vsock under the adversarial fuzzer (test/fuzz): the tx queue, whose packets the device
 * reads and returns with nothing written (§5.10.6.2), where a probe is a credit request for a
 * connection that does not exist, which the device answers on the rx queue, not in the buffer;
 * and the rx queue, where a probe is a buffer a host program's connection request must fill
 * (an OP_REQUEST packet, §5.10.6.4).
 *
 * The SEQPACKET profiles (§5.10.6.6) run with VIRTIO_VSOCK_F_SEQPACKET negotiated and host ends
 * that accept every connection and drain what they get, so the hostile driver's packets reach
 * message reassembly: the tx probes open SEQPACKET connections on a few ports and send message
 * parts, with and without EOM, between the garbage.
 */
import { type Duplex, PassThrough, duplexPair } from 'node:stream';
import type { FuzzProfile } from '../device-type.ts';
import { VsockDevice, type VsockHost } from './device.ts';
import { HEADER_BYTES, HOST_CID, Op, RXQ, Seq, SocketType, TXQ, decodeHeader, encodeHeader } from './wire.ts';

const GUEST_CID = 3;

/** A device whose host side has nothing listening: guest connections are refused. */
function vsock(maxQueueSize: number): VsockDevice {
  return new VsockDevice({ guestCid: GUEST_CID, maxQueueSize, host: { connect: () => Promise.reject(new Error('no host listeners in the fuzzer')) } });
}

/** Host ends that take every connection and read everything (messages too): nothing is held back. */
const drainingHost: VsockHost = {
  connect: () => Promise.resolve(new PassThrough().resume()),
  connectSeqpacket: () => {
    const [ours, program] = duplexPair({ objectMode: true });
    program.resume();
    return Promise.resolve(ours);
  },
};

/** A SEQPACKET packet of the probe sequence: connect, message parts (EOM when `fill` is odd), shut down. */
const SEQ_OPS = [Op.REQUEST, Op.RW, Op.RW, Op.RW, Op.SHUTDOWN, Op.CREDIT_REQUEST] as const;

/**
 * The rx queue: a probe is a buffer that a host program's connection request of `type` fills;
 * the guest never answers (its tx queue is not set up).
 */
function rxProfile(name: string, type: number): FuzzProfile {
  const seqpacket = type === SocketType.SEQPACKET;
  return {
    name,
    queue: RXQ,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      const device = seqpacket ? new VsockDevice({ guestCid: GUEST_CID, maxQueueSize, host: drainingHost }) : vsock(maxQueueSize);
      const end = (): Duplex => (seqpacket ? duplexPair({ objectMode: true })[0] : new PassThrough());
      const connect = (port: number): void => device.connectToGuest(port, end(), () => {}, type);
      return {
        device,
        produce: (seed) => connect(seed.a),
        probe: (seed) => ({
          readable: new Uint8Array(0),
          writable: HEADER_BYTES + (seed.b % 64),
          deliver: () => connect(seed.a),
          check(written, used) {
            if (used !== HEADER_BYTES) return `used length ${used} for a connection request`;
            const h = decodeHeader(written.subarray(0, HEADER_BYTES));
            if (h === undefined) return 'no packet header';
            const wrong = h.op !== Op.REQUEST || h.type !== type || h.srcCid !== HOST_CID || h.dstCid !== GUEST_CID || h.dstPort !== seed.a || h.len !== 0;
            return wrong ? `connection request arrived as ${JSON.stringify(h, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}` : undefined;
          },
        }),
        violation: () => undefined,
      };
    },
  };
}

export const VSOCK_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'vsock txq',
    queue: TXQ,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      const device = vsock(maxQueueSize);
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
  {
    name: 'vsock txq seqpacket',
    queue: TXQ,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      const device = new VsockDevice({ guestCid: GUEST_CID, maxQueueSize, host: drainingHost });
      return {
        device,
        probe: (seed) => {
          const op = SEQ_OPS[seed.choice % SEQ_OPS.length];
          const len = op === Op.RW ? seed.fill * 8 : 0;
          const header = encodeHeader({
            srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: 1000 + (seed.a % 4), dstPort: 2000 + (seed.b % 2), len,
            type: SocketType.SEQPACKET, op, flags: op === Op.RW ? (seed.fill & 1 ? Seq.EOM : 0) : op === Op.SHUTDOWN ? seed.fill & 3 : 0,
            bufAlloc: 1 << 20, fwdCnt: 0,
          });
          const readable = new Uint8Array(HEADER_BYTES + len);
          readable.set(header);
          readable.fill(seed.fill, HEADER_BYTES);
          return {
            readable,
            writable: 0,
            check: (_written, used) => (used === 0 ? undefined : `used length ${used} for a tx packet, which the device only reads`),
          };
        },
        violation: () => undefined,
      };
    },
  },
  rxProfile('vsock rx', SocketType.STREAM),
  rxProfile('vsock rx seqpacket', SocketType.SEQPACKET),
];
