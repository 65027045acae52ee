/**
 * Whole vfio-user messages out of a stream socket's bytes. A client sends each message, with
 * its descriptors, in one sendmsg. Linux ends a read right after the segment whose descriptors it
 * delivers, and may have glued earlier segments without descriptors in front of it (QEMU queues
 * DMA_UNMAP and DMA_MAP back to back). So the descriptors of one read belong to the LAST message
 * that begins within that read (as in vhost-user/reader.ts); descriptors in a read where no
 * message begins mean the stream cannot be trusted.
 */
import { HEADER_SIZE, MAX_MESSAGE_SIZE, decodeHeader, type Header } from './protocol.ts';

export interface Message {
  readonly header: Header;
  /** The bytes after the header. */
  readonly payload: Uint8Array;
  readonly fds: number[];
}

export type Framed = { readonly message: Message } | { readonly needMore: true } | { readonly fatal: string; readonly fds: number[] };

/** Descriptors that arrived with the stream bytes [start, end). */
interface FdBatch {
  readonly start: number;
  readonly end: number;
  readonly fds: number[];
}

export class MessageFramer {
  private buffer = new Uint8Array(0);
  /** Stream offset of buffer[0]. */
  private base = 0;
  private batches: FdBatch[] = [];

  push(bytes: Uint8Array, fds: number[]): void {
    const at = this.base + this.buffer.length;
    if (fds.length > 0) this.batches.push({ start: at, end: at + bytes.length, fds });
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
    if (this.batches.length > 0 && this.batches[0].end <= start) return this.fatal('descriptors arrived with bytes where no message begins');
    if (this.buffer.length < HEADER_SIZE) return { needMore: true };
    const header = decodeHeader(this.buffer);
    if (header.size < HEADER_SIZE || header.size > MAX_MESSAGE_SIZE) {
      return this.fatal(`message size ${header.size} is outside ${HEADER_SIZE}..${MAX_MESSAGE_SIZE}`);
    }
    if (this.buffer.length < header.size) return { needMore: true };
    const end = start + header.size;
    let fds: number[] = [];
    const [first, second] = this.batches;
    // Batches are disjoint and in stream order, so looking at two is enough.
    const inside = (b: FdBatch | undefined): boolean => b !== undefined && b.start > start && b.end <= end;
    // The read holding this message's first byte gives it its descriptors when it ends inside it.
    const owned = first !== undefined && first.start <= start && first.end <= end;
    if (inside(first) || (owned && inside(second))) return this.fatal('descriptors arrived in the middle of a message');
    if (owned) {
      fds = first.fds;
      this.batches.shift();
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
