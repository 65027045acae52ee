/**
 * The host end of a vsock SEQPACKET connection (§5.10.6.6) as a Node stream, so the device drives
 * it as it drives a stream connection's net.Socket (write callbacks are its credit, pause/resume
 * its back-pressure, end/close its shutdown): an object-mode Duplex over a Unix SOCK_SEQPACKET
 * socket in which every chunk is one whole message.
 * - Reading yields one Uint8Array per Unix message. A message longer than `maxMessage` cannot
 *   be carried whole: the stream is destroyed with an OversizeMessage error.
 * - Writing takes SeqpacketMessage objects; the write callback runs once the kernel took the
 *   message, so a host program that reads slowly holds back the writer.
 * - end() shuts the socket's write side (the program reads end of file); a read of 0 bytes is
 *   the program's end of file (an empty Unix message reads the same, see SeqpacketSocket).
 */
import { Duplex } from 'node:stream';
import { type Watcher, watch } from '../../native/readiness.ts';
import type { SeqpacketSocket } from '../../native/unix-socket.ts';
import { OversizeMessage, type SeqpacketMessage } from './wire.ts';

export class SeqpacketStream extends Duplex {
  private watcher: Watcher | undefined;
  /** The readable side wants messages (between _read() and a push() that said stop). */
  private reading = false;
  /** A message the socket had no room for, sent again once it is writable. */
  private blocked: { readonly message: SeqpacketMessage; readonly done: (err?: Error) => void } | undefined;

  constructor(
    private readonly socket: SeqpacketSocket,
    private readonly maxMessage: number,
  ) {
    // One message buffered each way: the device's own queues and credit bound the rest.
    super({ objectMode: true, allowHalfOpen: true, highWaterMark: 1 });
  }

  override _read(): void {
    this.reading = true;
    this.receive();
  }

  override _write(message: SeqpacketMessage, _encoding: BufferEncoding, done: (err?: Error) => void): void {
    try {
      if (this.socket.send(message.bytes, message.eor)) {
        done();
        return;
      }
    } catch (err) {
      done(err as Error);
      return;
    }
    this.blocked = { message, done };
    this.arm();
  }

  override _final(done: (err?: Error) => void): void {
    try {
      this.socket.shutdownWrite();
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.socket.close();
    done(err);
  }

  private receive(): void {
    while (this.reading && !this.destroyed) {
      let got;
      try {
        got = this.socket.receive(this.maxMessage);
      } catch (err) {
        this.destroy(err as Error);
        return;
      }
      if (got === null) break;
      if (got.length > got.bytes.length) {
        this.destroy(new OversizeMessage(got.length, this.maxMessage));
        return;
      }
      if (got.length === 0) {
        this.reading = false;
        this.push(null);
        break;
      }
      this.reading = this.push(got.bytes);
    }
    this.arm();
  }

  private flushBlocked(): void {
    const b = this.blocked;
    if (b === undefined) return;
    let sent: boolean;
    try {
      sent = this.socket.send(b.message.bytes, b.message.eor);
    } catch (err) {
      this.blocked = undefined;
      b.done(err as Error);
      return;
    }
    if (!sent) return;
    this.blocked = undefined;
    this.arm();
    b.done();
  }

  /** Watch for what is wanted now: readable while reading, writable while a message waits. */
  private arm(): void {
    if (this.destroyed) return;
    const handlers = {
      readable: this.reading ? () => this.receive() : undefined,
      writable: this.blocked !== undefined ? () => this.flushBlocked() : undefined,
      error: (err: Error) => this.destroy(err),
    };
    if (handlers.readable === undefined && handlers.writable === undefined) {
      this.watcher?.close();
      this.watcher = undefined;
      return;
    }
    if (this.watcher === undefined) this.watcher = watch(this.socket.fd, handlers);
    else this.watcher.update(handlers);
  }
}
