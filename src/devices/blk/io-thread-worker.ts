/**
 * The body of an I/O thread (started by io-thread.ts): perform the ring's requests in order
 * with blocking preadv/pwritev, store each result, and wake the event loop through its eventfd
 * only when no earlier wake-up is still unread, so a busy ring costs one signal per batch the
 * event loop takes, not one per request. With nothing to do the thread sleeps in Atomics.wait.
 */
import { workerData } from 'node:worker_threads';
import { EventFd } from '../../native/eventfd.ts';
import { Errno, lastErrno } from '../../native/syscall-error.ts';
import { preadv, pwritev } from '../../native/vectored-io.ts';
import { Counter, IoRing, Op, SLOTS } from './io-ring.ts';

export interface IoThreadData {
  readonly buffer: SharedArrayBuffer;
  /** The event loop's eventfd, owned (and closed) by the event loop side. */
  readonly wakeFd: number;
}

const { buffer, wakeFd } = workerData as IoThreadData;
const ring = new IoRing(buffer);
const { control } = ring;
const wake = EventFd.adopt(wakeFd);

/** Bytes transferred, or -errno; a call interrupted by a signal is simply made again. */
function perform(s: number): number {
  const call = ring.op(s) === Op.read ? preadv : pwritev;
  for (;;) {
    const n = call(ring.fd(s), ring.iovecs[s], ring.iovcnt(s), ring.position(s));
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno !== Errno.EINTR) return -errno;
  }
}

let done = Atomics.load(control, Counter.completed);
for (;;) {
  if (Atomics.load(control, Counter.submitted) === done) {
    if (Atomics.load(control, Counter.stop) !== 0) break;
    // Sleeps only while `submitted` still equals `done`: a request published meanwhile is not missed.
    Atomics.wait(control, Counter.submitted, done);
    continue;
  }
  const s = done & (SLOTS - 1);
  ring.setResult(s, perform(s));
  done = (done + 1) | 0;
  Atomics.store(control, Counter.completed, done);
  if (Atomics.exchange(control, Counter.wakePending, 1) === 0) wake.signal();
}
