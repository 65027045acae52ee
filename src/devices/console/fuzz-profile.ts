/**
 * virtio-console under the adversarial fuzzer (test/fuzz): the control transmitq, whose messages
 * the device parses (§5.3.6.2), where a probe is a well-formed control message of any event for
 * any port, consumed with nothing written; and port 0's receiveq without MULTIPORT (§5.3.6),
 * where a probe is a buffer host input must fill.
 */
import { PassThrough, Readable } from 'node:stream';
import { featureBit } from '../../virtio/constants.ts';
import type { FuzzProfile, ProbeSeed } from '../device-type.ts';
import { ConsoleDevice } from './device.ts';
import { CONTROL_TX_QUEUE, ConsoleFeature, ControlEvent, encodeControl, portReceiveQueue } from './wire.ts';

/** 1 to 64 bytes of host input, counting up from `fill`, so a misplaced byte shows. */
function hostInput(seed: ProbeSeed): Buffer {
  return Buffer.from(Array.from({ length: 1 + (seed.a % 64) }, (_, i) => (seed.fill + i) & 0xff));
}

const MAX_PORTS = 4;
const EVENTS = Object.values(ControlEvent);

export const CONSOLE_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'console control transmitq',
    queue: CONTROL_TX_QUEUE,
    minQueueSize: 1,
    create({ maxQueueSize }) {
      return {
        device: new ConsoleDevice([{ id: 0, console: true }, { id: 1, name: 'fuzz' }], { maxPorts: MAX_PORTS, maxQueueSize }),
        probe: (seed) => ({
          readable: encodeControl(seed.a % (MAX_PORTS + 2), EVENTS[seed.choice % EVENTS.length], seed.b & 1),
          writable: 0,
          check: (_written, used) => (used === 0 ? undefined : `used length ${used} for a control message, which has no device-writable part`),
        }),
        violation: () => undefined,
      };
    },
  },
  {
    name: 'console receiveq',
    queue: portReceiveQueue(0),
    minQueueSize: 1,
    withheldFeatures: featureBit(ConsoleFeature.MULTIPORT),
    create({ maxQueueSize }) {
      const device = new ConsoleDevice([{ id: 0, console: true }], { maxPorts: 1, maxQueueSize });
      // Host input arrives as a stream's 'data' events, and only while the port has not paused it
      // (back-pressure: a paused stream emits nothing).
      const input = new Readable({ read() {} });
      device.port(0)!.attach({ input, output: new PassThrough() });
      const type = (bytes: Buffer): void => {
        if (!input.isPaused()) input.emit('data', bytes);
      };
      return {
        device,
        produce: (seed) => type(hostInput(seed)),
        probe: (seed) => {
          const bytes = hostInput(seed);
          const room = 1 + (seed.b % 64);
          const expected = Math.min(room, bytes.length);
          return {
            readable: new Uint8Array(0),
            writable: room,
            deliver: () => type(bytes),
            check: (written, used) =>
              used === expected && written.subarray(0, used).every((v, i) => v === bytes[i])
                ? undefined
                : `${used} bytes of host input received, expected the first ${expected} of ${bytes.length}`,
          };
        },
        violation: () => undefined,
      };
    },
  },
];
