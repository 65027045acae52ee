/**
 * Both ends of vhost-user read their socket the same way: bytes, with the descriptors that came
 * with them, moved into a MessageReader until the socket is empty, the peer hangs up, or the
 * read budget of one wake-up is spent (polling is level-triggered, so the rest comes next time).
 */
import { closeAll } from '../../native/fd.ts';
import { MAX_TRANSFER, type UnixSocket } from '../../native/unix-socket.ts';
import { MAX_FDS } from './constants.ts';
import type { Stream } from './messages.ts';
import type { MessageReader } from './reader.ts';

/** Reads per wake-up: enough to empty a socket in normal use, few enough that a flooding peer cannot hold the event loop. */
const READS_PER_WAKEUP = 16;

export type Drained = 'empty' | 'budget spent' | 'hung up' | { readonly failed: string };

export function drainSocket<S extends Stream>(socket: UnixSocket, reader: MessageReader<S>): Drained {
  for (let reads = 0; reads < READS_PER_WAKEUP; reads++) {
    let got;
    try {
      got = socket.receive(MAX_TRANSFER, MAX_FDS);
    } catch (err) {
      return { failed: `receive failed: ${(err as Error).message}` };
    }
    if (got === null) return 'empty';
    if (got.bytes.length === 0) {
      closeAll(got.fds);
      return 'hung up';
    }
    // Descriptors lost to truncation are fatal for the message they belonged to.
    reader.push(got.bytes, got.fds, got.truncated || got.discardedFds > 0);
  }
  return 'budget spent';
}
