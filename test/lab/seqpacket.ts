/**
 * Whole SEQPACKET messages in tests: on a host program's Unix SOCK_SEQPACKET socket, and on a
 * vsock driver connection (an object-mode stream of messages).
 */
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import type { SeqpacketMessage } from '../../src/devices/vsock/wire.ts';
import { whenReadable, whenWritable } from '../../src/native/readiness.ts';
import type { SeqpacketSocket } from '../../src/native/unix-socket.ts';

/** The next message on a host program's socket (null: the connection ended or was reset). */
export async function nextMessage(s: SeqpacketSocket): Promise<Uint8Array | null> {
  for (;;) {
    let got;
    try {
      got = s.receive();
    } catch {
      return null;
    }
    if (got !== null) return got.length === 0 ? null : got.bytes;
    await whenReadable(s.fd);
  }
}

/** Send `m` as one message, waiting while the socket is full. */
export async function sendMessage(s: SeqpacketSocket, m: Uint8Array): Promise<void> {
  while (!s.send(m)) await whenWritable(s.fd);
}

/** The next `n` messages of a driver SEQPACKET connection. */
export async function readMessages(socket: Duplex, n: number): Promise<SeqpacketMessage[]> {
  const got: SeqpacketMessage[] = [];
  while (got.length < n) {
    const m = socket.read() as SeqpacketMessage | null;
    if (m !== null) got.push(m);
    else await once(socket, 'readable');
  }
  return got;
}
