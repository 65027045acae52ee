/**
 * eventfd: the kernel counter vhost-user uses for kicks (front-end -> back-end), calls
 * (back-end -> front-end) and errors. Writing adds to the counter and makes the descriptor
 * readable; reading returns the counter and resets it. Always non-blocking here, so a read
 * with nothing signalled answers 0n instead of stalling the event loop.
 */
import { declare } from './libc.ts';
import { O_CLOEXEC, O_NONBLOCK, closeFd, setNonBlocking } from './fd.ts';
import { Errno, SyscallError, check, lastErrno } from './syscall-error.ts';

const eventfd = declare<(initval: number, flags: number) => number>('int eventfd(unsigned int initval, int flags)');
const read = declare<(fd: number, buf: Uint8Array, count: number) => number>('intptr_t read(int fd, void *buf, size_t count)');
const write = declare<(fd: number, buf: Uint8Array, count: number) => number>('intptr_t write(int fd, const void *buf, size_t count)');

const EFD_SEMAPHORE = 1;
/** The counter's ceiling: the kernel refuses a write that would reach 2^64 - 1. */
const COUNTER_MAX = 0xffff_ffff_ffff_fffen;

export class EventFd {
  /** The 8-byte value read or written; one per descriptor (kept off the shared heap of calls). */
  private readonly cell = new Uint8Array(8);
  private readonly view = new DataView(this.cell.buffer);
  #closed = false;

  private constructor(readonly fd: number) {}

  /**
   * A new eventfd. With `semaphore`, each read takes 1 from the counter instead of all of it.
   */
  static create(options: { initial?: number; semaphore?: boolean } = {}): EventFd {
    const initial = options.initial ?? 0;
    if (!Number.isInteger(initial) || initial < 0 || initial > 0xffff_ffff) {
      throw new RangeError(`eventfd initial value ${initial} is not a 32-bit unsigned integer`);
    }
    const flags = O_CLOEXEC | O_NONBLOCK | (options.semaphore === true ? EFD_SEMAPHORE : 0);
    return new EventFd(check('eventfd', eventfd(initial, flags), 'creating an eventfd'));
  }

  /**
   * Take ownership of a descriptor received from a peer (a kick or call fd). It is made
   * non-blocking; the flag belongs to the open file the peer shares, which for eventfds QEMU
   * creates non-blocking anyway. The peer may also have sent a pipe end, which reads and
   * writes alike.
   */
  static adopt(fd: number): EventFd {
    setNonBlocking(fd);
    return new EventFd(fd);
  }

  /**
   * Add `n` to the counter, waking whoever waits for the descriptor. A counter already at its
   * ceiling (EAGAIN) is already signalled, so that is success too.
   */
  signal(n: bigint = 1n): void {
    if (n <= 0n || n > COUNTER_MAX) throw new RangeError(`eventfd increment ${n} is outside 1..2^64-2`);
    this.view.setBigUint64(0, n, true);
    if (write(this.fd, this.cell, 8) < 0) {
      const errno = lastErrno();
      if (errno !== Errno.EAGAIN) throw new SyscallError('write', errno, `signalling eventfd ${this.fd}`);
    }
  }

  /** Read and reset the counter: how many signals arrived since the last take, 0n for none. */
  take(): bigint {
    const n = read(this.fd, this.cell, 8);
    if (n < 0) {
      const errno = lastErrno();
      if (errno === Errno.EAGAIN) return 0n;
      throw new SyscallError('read', errno, `reading eventfd ${this.fd}`);
    }
    if (n !== 8) throw new SyscallError('read', Errno.EIO, `reading eventfd ${this.fd}: got ${n} of 8 bytes`);
    return this.view.getBigUint64(0, true);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }
}
