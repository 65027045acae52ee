/**
 * The front-end's end of the back-end request channel (BACKEND_REQ, SET_BACKEND_REQ_FD): the
 * socket on which the back-end starts conversations. The front-end takes CONFIG_CHANGE_MSG
 * (a configuration change interrupt for the driver) and refuses the rest, which belong to
 * protocol features it never negotiates. A request asking for a reply gets one ("REPLY_ACK"):
 * zero for a configuration change, non-zero for a refusal.
 *
 * Whatever arrives here is untrusted: a malformed message ends the channel (the main socket,
 * and with it the device, keeps working; configuration changes are then no longer heard of).
 */
import type { Logger } from 'pino';
import { closeAll } from '../../native/fd.ts';
import { type Watcher, watch } from '../../native/readiness.ts';
import type { UnixSocket } from '../../native/unix-socket.ts';
import { drainSocket } from './socket-drain.ts';
import { BackendRequest, backendRequestName } from './constants.ts';
import { encodeAck } from './messages.ts';
import { MessageReader } from './reader.ts';

export class FrontendBackendChannel {
  private readonly reader = new MessageReader('backend-requests');
  private watcher: Watcher | undefined;

  constructor(
    private readonly socket: UnixSocket,
    private readonly onConfigChange: () => void,
    private readonly log: Logger,
  ) {
    this.watcher = watch(socket.fd, {
      readable: () => this.readable(),
      error: (err) => this.end(`socket error: ${err.message}`),
    });
  }

  close(): void {
    this.end(undefined);
  }

  private readable(): void {
    const drained = drainSocket(this.socket, this.reader);
    if (typeof drained === 'object') {
      this.end(drained.failed);
      return;
    }
    if (drained === 'hung up') {
      this.end('the back-end closed it');
      return;
    }
    for (let next = this.reader.next(); next.type !== 'need-more' && this.watcher !== undefined; next = this.reader.next()) {
      if (next.type === 'error') {
        closeAll(next.error.fds);
        this.end(`malformed message: ${next.error.message}`);
        return;
      }
      const m = next.message;
      closeAll(m.fds);
      const accepted = m.request === BackendRequest.CONFIG_CHANGE_MSG;
      if (!accepted) this.log.warn(`back-end request ${backendRequestName(m.request)} refused: its protocol feature was not negotiated`);
      if (m.needReply && !this.reply(m.request, accepted ? 0n : 1n)) return;
      if (accepted) this.onConfigChange();
    }
  }

  /** Send the acknowledgement; false (and the channel ended) when it cannot be sent whole. */
  private reply(request: number, code: bigint): boolean {
    const ack = encodeAck('backend-replies', request, code);
    try {
      if (this.socket.send(ack.bytes) === ack.bytes.length) return true;
      this.end('the back-end does not read its replies');
    } catch (err) {
      this.end(`sending a reply failed: ${(err as Error).message}`);
    }
    return false;
  }

  /** Stop watching and close the socket; `reason` (when the back-end caused it) is logged. */
  private end(reason: string | undefined): void {
    if (this.watcher === undefined) return;
    this.watcher.close();
    this.watcher = undefined;
    closeAll(this.reader.takePendingFds());
    this.socket.close();
    if (reason !== undefined) this.log.warn(`back-end request channel closed: ${reason}`);
  }
}
