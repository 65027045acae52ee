/**
 * The shared memory between the event loop and one I/O thread (io-thread.ts): a ring of request
 * slots and its counters, in one SharedArrayBuffer both threads see.
 *
 * One producer (the event loop) fills slots and advances `submitted`; one consumer (the I/O
 * thread) performs them in order and advances `completed`. Each side only ever writes its own
 * counter, so no lock is needed. The counters are free-running 32-bit integers: slot n lives at
 * n mod SLOTS, and only differences and equality are ever compared.
 *
 * A slot carries a Linux iovec array (struct iovec { void *iov_base; size_t iov_len; }) that
 * points straight at guest memory: a worker thread is in the same process, so the event loop's
 * addresses are valid there and preadv2/pwritev2 fill or drain the guest's buffers with no copy.
 */
import { IOVEC_BYTES, IovecArray } from '../native/vectored-io.ts';
import { Op } from './block-backend.ts';

/** Request slots; a power of two. More requests than this wait on the event loop side. */
export const SLOTS = 128;
/** Most iovecs one slot carries; a longer request is split into several vectored calls. */
export const MAX_IOVECS = 64;

/** Index of each counter in `control`. */
export const Counter = {
  /** Slots filled by the event loop. */
  submitted: 0,
  /** Slots performed by the I/O thread, results stored. */
  completed: 1,
  /** 1 while the I/O thread is about to sleep or sleeping: only then does a submission notify it. */
  sleeping: 2,
  /** Set to 1 to make the I/O thread exit once it has nothing left to do. */
  stop: 3,
  /** Set to 1 by the I/O thread once it has loaded and serves the ring. */
  ready: 4,
} as const;

export { Op };

const CONTROL_BYTES = 64;
/** Slot layout: f64 position, f64 result (bytes or -errno), i32 op, i32 fd, i32 iovcnt, pad, then iovecs. */
const IOVECS_AT = 32;
const SLOT_BYTES = IOVECS_AT + MAX_IOVECS * IOVEC_BYTES;

/** Typed views of one ring; each thread builds its own over the same buffer. */
export class IoRing {
  readonly control: Int32Array;
  private readonly f64: Float64Array;
  private readonly i32: Int32Array;
  /** Per slot, its iovec array. */
  readonly iovecs: IovecArray[];

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(CONTROL_BYTES + SLOTS * SLOT_BYTES)) {
    this.control = new Int32Array(buffer, 0, CONTROL_BYTES / 4);
    this.f64 = new Float64Array(buffer, CONTROL_BYTES);
    this.i32 = new Int32Array(buffer, CONTROL_BYTES);
    this.iovecs = Array.from({ length: SLOTS }, (_, s) => new IovecArray(MAX_IOVECS, buffer, CONTROL_BYTES + s * SLOT_BYTES + IOVECS_AT));
  }

  /** Fill slot `s` with a vectored request on `segments` (at most MAX_IOVECS, each kept alive until it completes). */
  fill(s: number, op: Op, fd: number, position: number, segments: readonly Uint8Array[]): void {
    const base = (s * SLOT_BYTES) / 8;
    this.f64[base] = position;
    this.i32[base * 2 + 4] = op;
    this.i32[base * 2 + 5] = fd;
    this.i32[base * 2 + 6] = this.iovecs[s].set(segments);
  }

  op(s: number): Op {
    return this.i32[((s * SLOT_BYTES) / 8) * 2 + 4] as Op;
  }

  fd(s: number): number {
    return this.i32[((s * SLOT_BYTES) / 8) * 2 + 5];
  }

  iovcnt(s: number): number {
    return this.i32[((s * SLOT_BYTES) / 8) * 2 + 6];
  }

  position(s: number): number {
    return this.f64[(s * SLOT_BYTES) / 8];
  }

  /** Bytes transferred, or a negative errno. */
  result(s: number): number {
    return this.f64[(s * SLOT_BYTES) / 8 + 1];
  }

  setResult(s: number, value: number): void {
    this.f64[(s * SLOT_BYTES) / 8 + 1] = value;
  }
}
