/**
 * virtio-console under the adversarial fuzzer (test/fuzz): the control transmitq, whose messages
 * the device parses (§5.3.6.2). A probe is a well-formed control message of any event for any
 * port; the device consumes it and writes nothing.
 */
import type { FuzzProfile } from '../device-type.ts';
import { ConsoleDevice } from './device.ts';
import { CONTROL_TX_QUEUE, ControlEvent, encodeControl } from './wire.ts';

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
];
