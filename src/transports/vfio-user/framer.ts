/**
 * Whole vfio-user messages out of a stream socket's bytes. A client sends each message, with
 * its descriptors, in one sendmsg; Linux delivers those descriptors with the read that starts at
 * that message's first byte. So descriptors belong to the message that begins where their read
 * begins, and descriptors arriving in the middle of a message mean the stream cannot be trusted.
 */
import { HEADER_SIZE, MAX_MESSAGE_SIZE, decodeHeader, type Header } from './protocol.ts';

export interface Message {
  readonly header: Header;
  /** The bytes after the header. */
  readonly payload: Uint8Array;
  readonly fds: number[];
}

export type Framed = { readonly message: Message } | { readonly needMore: true } | { readonly fatal: string; readonly fds: number[] };

interface FdBatch {
  readonly at: number;
  readonly fds: number[];
}

export class MessageFramer {
  private buffer = new Uint8Array(0);
  /** Stream offset of buffer[0]. */
  private base = 0;
  private batches: FdBatch[] = [];

  push(bytes: Uint8Array, fds: number[]): void {
    const at = this.base + this.buffer.length;
    if (fds.length > 0) this.batches.push({ at, fds });
    const next = new Uint8Array(this.buffer.length + bytes.length);
    next.set(this.buffer);
    next.set(bytes, this.buffer.length);
    this.buffer = next;
  }

  /** Bytes received but not yet taken as messages. */
  get buffered(): number {
    return this.buffer.length;
  }

  next(): Framed {
    const start = this.base;
    if (this.batches.length > 0 && this.batches[0].at < start) return this.fatal('descriptors arrived in the middle of a message');
    if (this.buffer.length < HEADER_SIZE) return { needMore: true };
    const header = decodeHeader(this.buffer);
    if (header.size < HEADER_SIZE || header.size > MAX_MESSAGE_SIZE) {
      return this.fatal(`message size ${header.size} is outside ${HEADER_SIZE}..${MAX_MESSAGE_SIZE}`);
    }
    if (this.buffer.length < header.size) return { needMore: true };
    const end = start + header.size;
    let fds: number[] = [];
    if (this.batches.length > 0 && this.batches[0].at === start) fds = this.batches.shift()!.fds;
    if (this.batches.length > 0 && this.batches[0].at < end) {
      const fatal = this.fatal('descriptors arrived in the middle of a message');
      return { fatal: fatal.fatal, fds: [...fds, ...fatal.fds] };
    }
    const payload = this.buffer.slice(HEADER_SIZE, header.size);
    this.buffer = this.buffer.subarray(header.size);
    this.base = end;
    return { message: { header, payload, fds } };
  }

  /** Every descriptor not yet handed out (to close on disconnect). */
  takeFds(): number[] {
    const fds = this.batches.flatMap((b) => b.fds);
    this.batches = [];
    return fds;
  }

  private fatal(reason: string): { fatal: string; fds: number[] } {
    this.buffer = new Uint8Array(0);
    return { fatal: reason, fds: this.takeFds() };
  }
}
