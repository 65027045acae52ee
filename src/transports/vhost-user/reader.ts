/**
 * The streaming side of the codec: bytes arrive from a stream socket split or coalesced
 * anyhow, descriptors arrive beside some of them, and out come whole, checked messages.
 *
 * Descriptor attribution. Senders attach a message's descriptors to the sendmsg carrying the
 * message's first byte. On the receiving side Linux ends a recvmsg right after the segment
 * whose descriptors it delivers, and delivers them with that segment's first read. So the
 * descriptors of one read belong to the LAST message that begins within that read. A read
 * with descriptors in which no message begins breaks that convention: fatal, since which
 * message they belong to can no longer be known.
 */
import { HEADER_SIZE, HeaderFlag, MAX_PAYLOAD_SIZE } from './constants.ts';
import { decodeMessage, VhostUserProtocolError, type Header, type Stream, type StreamMessages } from './messages.ts';
import type { LayoutOptions } from './payloads.ts';

export type ReadResult<M> =
  | { readonly type: 'message'; readonly message: M }
  | { readonly type: 'need-more' }
  | { readonly type: 'error'; readonly error: VhostUserProtocolError };

/** Descriptors that arrived with the stream bytes [start, end). */
interface FdBatch {
  readonly start: number;
  readonly end: number;
  readonly fds: readonly number[];
}

const NEED_MORE = { type: 'need-more' } as const;

export class MessageReader<S extends Stream> {
  private buffer = new Uint8Array(0);
  /** Read position in `buffer`. */
  private pos = 0;
  /** Stream offset of buffer[0]. */
  private base = 0;
  private batches: FdBatch[] = [];
  /** A fatal error found by push(), for the next call of next() (with its descriptors). */
  private pending: VhostUserProtocolError | null = null;
  /** The fatal error as returned ever after. */
  private failed: VhostUserProtocolError | null = null;
  private layout: LayoutOptions = { xenMmap: false };

  constructor(
    readonly stream: S,
    private readonly maxPayload: number = MAX_PAYLOAD_SIZE,
  ) {}

  /** Region descriptions grow by the Xen fields once XEN_MMAP is negotiated. */
  setLayout(layout: LayoutOptions): void {
    this.layout = layout;
  }

  /**
   * Add what one read returned. `fdsLost` says the socket dropped descriptors (control data
   * truncated, or more than the caller accepts): which message lost them is unknowable, so the
   * next read reports a fatal error.
   */
  push(bytes: Uint8Array, fds: readonly number[] = [], fdsLost = false): void {
    const at = this.base + this.buffer.length;
    if (fds.length > 0) this.batches.push({ start: at, end: at + bytes.length, fds });
    if (fdsLost && this.failed === null) this.pending = this.fail('fds-truncated', 'the socket dropped descriptors of a message');
    if (this.failed !== null || bytes.length === 0) return;
    const unread = this.buffer.length - this.pos;
    const next = new Uint8Array(unread + bytes.length);
    next.set(this.buffer.subarray(this.pos));
    next.set(bytes, unread);
    this.base += this.pos;
    this.pos = 0;
    this.buffer = next;
  }

  /**
   * The next message, a request for more bytes, or an error. A non-fatal error skipped one
   * whole message; after a fatal one every call returns it again (with no descriptors: those
   * went out the first time).
   */
  next(): ReadResult<StreamMessages[S]> {
    if (this.failed !== null) {
      const error = this.pending ?? this.failed;
      this.pending = null;
      return { type: 'error', error };
    }
    const start = this.base + this.pos;
    if (this.batches.length > 0 && this.batches[0].end <= start) {
      return this.fatal('fds-without-message', 'descriptors arrived with bytes where no message begins');
    }
    const available = this.buffer.length - this.pos;
    if (available < HEADER_SIZE) return NEED_MORE;
    const view = new DataView(this.buffer.buffer, this.buffer.byteOffset + this.pos);
    const header: Header = { request: view.getUint32(0, true), flags: view.getUint32(4, true), size: view.getUint32(8, true) };
    // Framing rules: past either, the stream cannot be trusted to be framed at all.
    if ((header.flags & HeaderFlag.VERSION_MASK) !== HeaderFlag.VERSION) {
      return this.fatal('header-version', `version ${header.flags & HeaderFlag.VERSION_MASK}, expected 1`, header);
    }
    if (header.size > this.maxPayload) {
      return this.fatal('payload-too-large', `payload of ${header.size} bytes exceeds ${this.maxPayload}`, header);
    }
    const length = HEADER_SIZE + header.size;
    if (available < length) return NEED_MORE;

    const end = start + length;
    let fds: readonly number[] = [];
    const [first, second] = this.batches;
    // Batches are disjoint and in stream order, so looking at two is enough.
    const inside = (b: FdBatch | undefined): boolean => b !== undefined && b.start > start && b.end <= end;
    // The read that holds this message's first byte owns it when it ends inside this message.
    const owned = first !== undefined && first.start <= start && first.end <= end;
    if (inside(first) || (owned && inside(second))) {
      return this.fatal('fds-without-message', 'descriptors arrived in the middle of a message', header);
    }
    if (owned) {
      fds = first.fds;
      this.batches.shift();
    }
    this.pos += length;
    const payload = new DataView(this.buffer.buffer, this.buffer.byteOffset + this.pos - header.size, header.size);
    const decoded = decodeMessage(this.stream, header, payload, fds, this.layout);
    return decoded instanceof VhostUserProtocolError ? { type: 'error', error: decoded } : { type: 'message', message: decoded };
  }

  /**
   * Bytes pushed but not yet consumed. A caller that stops reading the socket above some bound
   * leaves a flooding peer's data in the peer's socket buffer instead of this process's memory.
   */
  get buffered(): number {
    return this.buffer.length - this.pos;
  }

  /** Descriptors received but not yet handed out in a message or error (close them on disconnect). */
  takePendingFds(): number[] {
    const fds = this.batches.flatMap((b) => b.fds);
    this.batches = [];
    return fds;
  }

  private fatal(rule: VhostUserProtocolError['rule'], detail: string, header?: Header): ReadResult<StreamMessages[S]> {
    return { type: 'error', error: this.fail(rule, detail, header) };
  }

  /** Enter the failed state; the error returned carries every descriptor still held. */
  private fail(rule: VhostUserProtocolError['rule'], detail: string, header?: Header): VhostUserProtocolError {
    this.failed = new VhostUserProtocolError(rule, detail, true, header, []);
    this.buffer = new Uint8Array(0);
    this.pos = 0;
    return new VhostUserProtocolError(rule, detail, true, header, this.takePendingFds());
  }
}
