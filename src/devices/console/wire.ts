/**
 * The virtio-console wire format (§5.3): feature bits, the configuration space, the queue
 * numbering of a multiport device and the control messages both halves exchange on the control
 * queues. Device and driver encode and decode through this module so they cannot disagree on a byte.
 */
import { ConfigLayout, type ValuesOf } from '../../virtio/config-layout.ts';

/** §5.3.3 feature bits (bit numbers). */
export const ConsoleFeature = {
  /** cols and rows in the configuration space are valid. */
  SIZE: 0,
  /** Several ports and the control queues; max_nr_ports is valid. */
  MULTIPORT: 1,
  /** The driver may write single bytes to port 0 through emerg_wr. */
  EMERG_WRITE: 2,
} as const;

/** §5.3.4: struct virtio_console_config. */
export const CONSOLE_CONFIG = new ConfigLayout('virtio-console', {
  cols: { offset: 0, width: 2, feature: ConsoleFeature.SIZE },
  rows: { offset: 2, width: 2, feature: ConsoleFeature.SIZE },
  maxNrPorts: { offset: 4, width: 4, feature: ConsoleFeature.MULTIPORT, about: 'ports, port 0 included' },
  emergWr: { offset: 8, width: 4, feature: ConsoleFeature.EMERG_WRITE },
});
export type ConsoleConfig = ValuesOf<typeof CONSOLE_CONFIG>;

/**
 * Ports a device may have: control messages carry a 32-bit id, but every port takes two queues and
 * virtio-pci numbers queues in 16 bits; QEMU's virtio-serial allows 31 (max_ports), Linux any.
 */
export const MAX_PORTS_LIMIT = 511;

/** Queue index of the control receiveq (device to driver) and transmitq (§5.3.2). */
export const CONTROL_RX_QUEUE = 2;
export const CONTROL_TX_QUEUE = 3;

/** §5.3.2: port 0 uses queues 0 and 1; port n > 0 uses 2+2n and 3+2n, after the control queues. */
export function portReceiveQueue(port: number): number {
  return port === 0 ? 0 : 2 + 2 * port;
}

export function portTransmitQueue(port: number): number {
  return portReceiveQueue(port) + 1;
}

/** Queues of a device with `maxPorts` ports: two per port and, with MULTIPORT, two control queues. */
export function consoleQueueCount(maxPorts: number, multiport: boolean): number {
  return multiport ? 2 * maxPorts + 2 : 2;
}

/** The port a queue belongs to and whether it is that port's receiveq; undefined for control queues. */
export function queuePort(queue: number): { port: number; receive: boolean } | undefined {
  if (queue < 2) return { port: 0, receive: queue === 0 };
  if (queue < 4) return undefined;
  return { port: (queue - 2) >> 1, receive: queue % 2 === 0 };
}

/** §5.3.6.2 control events. */
export const ControlEvent = {
  DEVICE_READY: 0,
  DEVICE_ADD: 1,
  DEVICE_REMOVE: 2,
  PORT_READY: 3,
  CONSOLE_PORT: 4,
  RESIZE: 5,
  PORT_OPEN: 6,
  PORT_NAME: 7,
} as const;

export const CONTROL_EVENT_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(ControlEvent).map(([name, value]) => [value, name]),
);

/** struct virtio_console_control: le32 id, le16 event, le16 value. */
export const CONTROL_HEADER_SIZE = 8;

/** Longest port name either half accepts; Linux reads the name into a buffer it allocates per message. */
export const MAX_NAME_BYTES = 255;

export interface ControlMessage {
  readonly id: number;
  readonly event: number;
  readonly value: number;
  /** What follows the header: a port name (PORT_NAME) or struct virtio_console_resize (RESIZE). */
  readonly payload: Uint8Array;
}

export function encodeControl(id: number, event: number, value: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(CONTROL_HEADER_SIZE + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, id, true);
  view.setUint16(4, event, true);
  view.setUint16(6, value, true);
  out.set(payload, CONTROL_HEADER_SIZE);
  return out;
}

/** A control message, or undefined when `bytes` is shorter than the header. */
export function decodeControl(bytes: Uint8Array): ControlMessage | undefined {
  if (bytes.length < CONTROL_HEADER_SIZE) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { id: view.getUint32(0, true), event: view.getUint16(4, true), value: view.getUint16(6, true), payload: bytes.subarray(CONTROL_HEADER_SIZE) };
}

/** §5.3.6.2: RESIZE is followed by struct virtio_console_resize { le16 cols; le16 rows; }. */
export function encodeResize(port: number, cols: number, rows: number): Uint8Array {
  const size = new Uint8Array(4);
  const view = new DataView(size.buffer);
  view.setUint16(0, cols, true);
  view.setUint16(2, rows, true);
  return encodeControl(port, ControlEvent.RESIZE, 0, size);
}

export function decodeResize(payload: Uint8Array): { cols: number; rows: number } | undefined {
  if (payload.length < 4) return undefined;
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return { cols: view.getUint16(0, true), rows: view.getUint16(2, true) };
}

/** A port name as the device sends it: UTF-8, no terminator (§5.3.6.2, PORT_NAME). */
export function encodeName(port: number, name: string): Uint8Array {
  return encodeControl(port, ControlEvent.PORT_NAME, 1, new TextEncoder().encode(name));
}

/** A port name as the driver reads it: up to the first NUL, if any. */
export function decodeName(payload: Uint8Array): string {
  const nul = payload.indexOf(0);
  return new TextDecoder().decode(nul < 0 ? payload : payload.subarray(0, nul));
}
