/**
 * The body of an I/O thread (started by io-thread.ts): perform the ring's requests in order
 * with blocking preadv2/pwritev2, store each result, and wake the event loop through its eventfd
 * only when no earlier wake-up is still unread, so a busy ring costs one signal per batch the
 * event loop takes, not one per request. With nothing to do the thread sleeps in Atomics.wait.
 */
import { workerData } from 'node:worker_threads';
import { EventFd } from '../native/eventfd.ts';
import { Errno, lastErrno } from '../native/syscall-error.ts';
import { preadv2, pwritev2 } from '../native/vectored-io.ts';
import { Counter, IoRing, Op, SLOTS } from './io-ring.ts';

export interface IoThreadData {
  readonly buffer: SharedArrayBuffer;
  /** The event loop's eventfd, shared by all its I/O threads, owned (and closed) by the event loop side. */
  readonly wakeFd: number;
  /** One Int32: 1 while a wake-up signalled on `wakeFd` is not consumed yet, so only 0 -> 1 signals. */
  readonly wakePending: SharedArrayBuffer;
}

const data = workerData as IoThreadData;
const ring = new IoRing(data.buffer);
const { control } = ring;
const wake = EventFd.adopt(data.wakeFd);
const wakePending = new Int32Array(data.wakePending);

/** Bytes transferred, or -errno; a call interrupted by a signal is simply made again. */
function perform(s: number): number {
  const call = ring.op(s) === Op.read ? preadv2 : pwritev2;
  for (;;) {
    const n = call(ring.fd(s), ring.iovecs[s].bytes, ring.iovcnt(s), ring.position(s), 0);
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno !== Errno.EINTR) return -errno;
  }
}

let done = Atomics.load(control, Counter.completed);
Atomics.store(control, Counter.ready, 1);
for (;;) {
  if (Atomics.load(control, Counter.submitted) === done) {
    if (Atomics.load(control, Counter.stop) !== 0) break;
    // Announce the sleep, then look again: a submission either is seen here or sees the flag and
    // notifies; and the wait itself returns at once if `submitted` moved in between.
    Atomics.store(control, Counter.sleeping, 1);
    if (Atomics.load(control, Counter.submitted) === done && Atomics.load(control, Counter.stop) === 0) {
      Atomics.wait(control, Counter.submitted, done);
    }
    Atomics.store(control, Counter.sleeping, 0);
    continue;
  }
  const s = done & (SLOTS - 1);
  ring.setResult(s, perform(s));
  done = (done + 1) | 0;
  Atomics.store(control, Counter.completed, done);
  if (Atomics.exchange(wakePending, 0, 1) === 0) wake.signal();
}
