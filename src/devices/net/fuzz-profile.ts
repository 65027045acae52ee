/**
 * virtio-net under the adversarial fuzzer (test/fuzz): the transmit queue, whose well-formed
 * requests are frames that must come out of the device's port unchanged (§5.1.6.2), the control
 * queue, whose probes are receive-mode commands that must be acknowledged (§5.1.6.5.1), and the
 * receive queue, whose probes are buffers a frame arriving at the port must fill (§5.1.6.4).
 */
import type { FuzzProfile, FuzzSubject, ProbeSeed } from '../device-type.ts';
import { NetDevice } from './device.ts';
import { type FrameHandler, type NetPort, PortCounters } from './port.ts';
import { CtrlAck, CtrlClass, CtrlRx, NET_HDR_SIZE, NO_OFFLOAD } from './wire.ts';

/** A port that keeps the frames the device sent out of it, and through which frames arrive. */
class CapturePort implements NetPort {
  readonly name = 'fuzz';
  readonly counters = new PortCounters();
  readonly sent: Uint8Array[] = [];
  private handler: FrameHandler | undefined;

  send(frame: Uint8Array): void {
    this.sent.push(frame.slice());
  }
  onReceive(handler: FrameHandler | undefined): void {
    this.handler = handler;
  }
  /** A frame from the network, for the device to deliver. */
  arrive(frame: Uint8Array): void {
    this.handler?.(frame, NO_OFFLOAD);
  }
  close(): void {}
}

/** A broadcast IPv4 frame of 60..1514 bytes filled with `fill`, as a seed picks it. */
function frameOf(seed: ProbeSeed): Uint8Array {
  const frame = new Uint8Array(60 + ((seed.a * 251 + seed.b) % (1514 - 60 + 1))).fill(seed.fill);
  frame.fill(0xff, 0, 6);
  frame.set([0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00], 6);
  return frame;
}

/** A device on a capture port; on the receive queue, events are frames arriving at the port. */
function subject(maxQueueSize: number, probe: (port: CapturePort, seed: ProbeSeed) => ReturnType<FuzzSubject['probe']>, receiveq = false): FuzzSubject {
  const port = new CapturePort();
  const device = new NetDevice({
    port,
    mac: '52:54:00:12:34:56',
    queueSize: maxQueueSize,
    features: { packed: true, eventIdx: true, indirect: true, inOrder: true },
  });
  const produce = receiveq ? (seed: ProbeSeed) => port.arrive(frameOf(seed)) : undefined;
  return { device, probe: (seed) => probe(port, seed), violation: () => undefined, produce };
}

export const NET_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'net transmitq',
    queue: 1,
    minQueueSize: 1,
    create: ({ maxQueueSize }) =>
      subject(maxQueueSize, (port, seed) => {
        // The frame after a virtio_net_hdr asking for no offload.
        const frame = frameOf(seed);
        const length = frame.length;
        const readable = new Uint8Array(NET_HDR_SIZE + length);
        readable.set(frame, NET_HDR_SIZE);
        const before = port.sent.length;
        return {
          readable,
          writable: 0,
          check(_written, used) {
            if (used !== 0) return `used length ${used} for a transmit buffer`;
            if (port.sent.length !== before + 1) return `${port.sent.length - before} frames left the port, expected 1`;
            const out = port.sent[before];
            return out.length === length && out.every((v, i) => v === frame[i]) ? undefined : 'the frame left the port changed';
          },
        };
      }),
  },
  {
    name: 'net controlq',
    queue: 2,
    // A command is readable and its ack writable: two descriptors at least.
    minQueueSize: 2,
    create: ({ maxQueueSize }) =>
      subject(maxQueueSize, (_port, seed) => {
        // VIRTIO_NET_CTRL_RX_PROMISC or _ALLMULTI, on or off: each must be acknowledged.
        const command = seed.choice % 2 === 0 ? CtrlRx.PROMISC : CtrlRx.ALLMULTI;
        return {
          readable: Uint8Array.of(CtrlClass.RX, command, seed.a % 2),
          writable: 1,
          check: (written, used) => (used === 1 && written[0] === CtrlAck.OK ? undefined : `ack ${written[0]} with used length ${used}`),
        };
      }),
  },
  {
    name: 'net receiveq',
    queue: 0,
    minQueueSize: 1,
    create: ({ maxQueueSize }) =>
      subject(maxQueueSize, (port, seed) => {
        // One buffer that takes any frame: the frame comes whole after a header, in one buffer.
        const frame = frameOf(seed);
        return {
          readable: new Uint8Array(0),
          writable: NET_HDR_SIZE + 1514,
          deliver: () => port.arrive(frame),
          check(written, used) {
            if (used !== NET_HDR_SIZE + frame.length) return `used length ${used} for a ${frame.length}-byte frame`;
            const got = written.subarray(NET_HDR_SIZE, used);
            return got.every((v, i) => v === frame[i]) ? undefined : 'the frame arrived changed';
          },
        };
      }, true),
  },
];
