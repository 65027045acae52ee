/**
 * File descriptors as plain numbers, with the few operations every other native module needs:
 * close (once, tolerating EINTR as Linux does) and switching a received descriptor to
 * non-blocking mode so that nothing read from it can stall the event loop.
 */
import { declare } from './libc.ts';
import { Errno, SyscallError, check, lastErrno } from './syscall-error.ts';

const closeFn = declare<(fd: number) => number>('int close(int fd)');
// fcntl is variadic: the third argument is passed with its type, koffi style.
export const fcntl = declare<(fd: number, cmd: number, ...rest: unknown[]) => number>('int fcntl(int fd, int cmd, ...)');

const F_GETFL = 3;
const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

/**
 * Close a descriptor. On Linux the descriptor is released even when close reports EINTR,
 * so EINTR is success here; retrying could close a descriptor someone else just got.
 */
export function closeFd(fd: number): void {
  if (closeFn(fd) < 0) {
    const errno = lastErrno();
    if (errno !== Errno.EINTR) throw new SyscallError('close', errno, `closing fd ${fd}`);
  }
}

/** Close every descriptor, even when some fail; the first failure is rethrown afterwards. */
export function closeAll(fds: Iterable<number>): void {
  let first: unknown;
  for (const fd of fds) {
    try {
      closeFd(fd);
    } catch (e) {
      first ??= e;
    }
  }
  if (first !== undefined) throw first;
}

/** Make reads and writes on `fd` return EAGAIN instead of blocking. */
export function setNonBlocking(fd: number): void {
  const flags = check('fcntl', fcntl(fd, F_GETFL), `reading the flags of fd ${fd}`);
  if ((flags & O_NONBLOCK) === 0) {
    check('fcntl', fcntl(fd, F_SETFL, 'int', flags | O_NONBLOCK), `making fd ${fd} non-blocking`);
  }
}
