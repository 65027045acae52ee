/** Building vfio-user messages and reading replies, for the unit tests of the server. */
import { pino } from 'pino';
import type { Message } from '../../../src/transports/vfio-user/framer.ts';
import { HEADER_SIZE, decodeHeader, type Header } from '../../../src/transports/vfio-user/protocol.ts';

export const quiet = pino({ level: 'silent' });

/** A whole message: header (id, command, flags) and payload. */
export function encode(id: number, command: number, payload: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const v = new DataView(out.buffer);
  v.setUint16(0, id, true);
  v.setUint16(2, command, true);
  v.setUint32(4, out.length, true);
  v.setUint32(8, flags, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

export function message(id: number, command: number, payload: Uint8Array, fds: number[] = [], flags = 0): Message {
  const bytes = encode(id, command, payload, flags);
  return { header: decodeHeader(bytes), payload: bytes.subarray(HEADER_SIZE), fds };
}

/** Little-endian fields: [width in bytes, value] pairs. */
export function fields(...parts: readonly (readonly [1 | 2 | 4 | 8, number | bigint])[]): Uint8Array {
  const size = parts.reduce((n, [w]) => n + w, 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let at = 0;
  for (const [w, value] of parts) {
    if (w === 8) v.setBigUint64(at, BigInt(value), true);
    else if (w === 4) v.setUint32(at, Number(value), true);
    else if (w === 2) v.setUint16(at, Number(value), true);
    else v.setUint8(at, Number(value));
    at += w;
  }
  return out;
}

export interface Reply {
  readonly header: Header;
  readonly payload: Uint8Array;
  readonly view: DataView;
}

export function reply(bytes: Uint8Array): Reply {
  const header = decodeHeader(bytes);
  const payload = bytes.subarray(HEADER_SIZE);
  return { header, payload, view: new DataView(payload.buffer, payload.byteOffset, payload.byteLength) };
}

/** VERSION with QEMU's capabilities. */
export function versionPayload(): Uint8Array {
  const caps = Buffer.from('{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535}}\0');
  const out = new Uint8Array(4 + caps.length);
  out.set(caps, 4);
  return out;
}
