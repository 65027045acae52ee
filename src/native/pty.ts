/**
 * Pseudo-terminals (posix_openpt, grantpt, unlockpt, ptsname_r) and non-blocking reads and
 * writes on their master side, for a console port whose host end is a terminal program
 * (`screen /dev/pts/N`).
 */
import { declare } from './libc.ts';
import { O_CLOEXEC, O_NONBLOCK, closeFd } from './fd.ts';
import { Errno, SyscallError, check, lastErrno } from './syscall-error.ts';

const O_RDWR = 2;
const O_NOCTTY = 0o400;
const TCSANOW = 0;
/** glibc's struct termios is 60 bytes on Linux; room to spare. */
const TERMIOS_BYTES = 64;

const posixOpenpt = declare<(flags: number) => number>('int posix_openpt(int flags)');
const grantpt = declare<(fd: number) => number>('int grantpt(int fd)');
const unlockpt = declare<(fd: number) => number>('int unlockpt(int fd)');
const ptsnameR = declare<(fd: number, buf: Uint8Array, len: number) => number>('int ptsname_r(int fd, _Out_ uint8_t *buf, size_t buflen)');
const openFn = declare<(path: string, flags: number) => number>('int open(const char *path, int flags)');
const tcgetattr = declare<(fd: number, termios: Uint8Array) => number>('int tcgetattr(int fd, _Out_ uint8_t *termios)');
const tcsetattr = declare<(fd: number, action: number, termios: Uint8Array) => number>('int tcsetattr(int fd, int action, const uint8_t *termios)');
const cfmakeraw = declare<(termios: Uint8Array) => void>('void cfmakeraw(_Inout_ uint8_t *termios)');
const read = declare<(fd: number, buf: Uint8Array, count: number) => number>('intptr_t read(int fd, _Out_ uint8_t *buf, size_t count)');
const write = declare<(fd: number, buf: Uint8Array, count: number) => number>('intptr_t write(int fd, const uint8_t *buf, size_t count)');

export interface Pty {
  /** The master side, non-blocking. */
  readonly master: number;
  /**
   * A descriptor on the terminal side kept open by the owner, so the master never sees the
   * hang-up of a terminal program leaving (which would poll readable for ever and read EIO).
   */
  readonly slave: number;
  /** The terminal side's path, e.g. /dev/pts/3. */
  readonly path: string;
}

/** A new pseudo-terminal in raw mode (no echo, no line editing: bytes pass as they are). */
export function openPty(): Pty {
  const master = check('posix_openpt', posixOpenpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK), 'opening a pseudo-terminal');
  try {
    check('grantpt', grantpt(master), 'granting the pseudo-terminal');
    check('unlockpt', unlockpt(master), 'unlocking the pseudo-terminal');
    const name = new Uint8Array(128);
    const err = ptsnameR(master, name, name.length);
    if (err !== 0) throw new SyscallError('ptsname_r', err, 'naming the pseudo-terminal');
    const path = new TextDecoder().decode(name.subarray(0, name.indexOf(0)));
    const slave = check('open', openFn(path, O_RDWR | O_NOCTTY | O_CLOEXEC), `opening ${path}`);
    const termios = new Uint8Array(TERMIOS_BYTES);
    check('tcgetattr', tcgetattr(slave, termios), `reading the modes of ${path}`);
    cfmakeraw(termios);
    check('tcsetattr', tcsetattr(slave, TCSANOW, termios), `making ${path} raw`);
    return { master, slave, path };
  } catch (err) {
    closeFd(master);
    throw err;
  }
}

/** Read what the terminal side wrote: a byte count, or -1 when there is nothing now. */
export function readPty(fd: number, buf: Uint8Array): number {
  const n = read(fd, buf, buf.length);
  if (n >= 0) return n;
  const errno = lastErrno();
  if (errno === Errno.EAGAIN || errno === Errno.EIO) return -1;
  throw new SyscallError('read', errno, `reading pseudo-terminal fd ${fd}`);
}

/** Write for the terminal side to read: bytes taken, or -1 when its input queue is full. */
export function writePty(fd: number, bytes: Uint8Array): number {
  const n = write(fd, bytes, bytes.length);
  if (n >= 0) return n;
  const errno = lastErrno();
  if (errno === Errno.EAGAIN) return -1;
  throw new SyscallError('write', errno, `writing pseudo-terminal fd ${fd}`);
}
