/**
 * Space management of disk-image files that node:fs lacks: deallocating ranges (discard,
 * write-zeroes without allocation) and finding the allocated extents of a sparse file.
 * fallocate and fdatasync can wait on the disk, so they run on the libuv thread pool like
 * node:fs/promises does; lseek only consults the file's extent map and stays synchronous.
 */
import { declare } from './libc.ts';
import { Errno, SyscallError, lastErrno } from './syscall-error.ts';

const fallocate = declare<(fd: number, mode: number, offset: number, length: number) => number>(
  'int fallocate(int fd, int mode, int64_t offset, int64_t len)',
);
const fdatasyncFn = declare<(fd: number) => number>('int fdatasync(int fd)');
const lseek = declare<(fd: number, offset: number, whence: number) => number>('int64_t lseek(int fd, int64_t offset, int whence)');

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

function checkRange(what: string, offset: number, length: number): void {
  const valid = Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(length) && length > 0;
  if (!valid || offset + length > Number.MAX_SAFE_INTEGER) {
    throw new RangeError(`${what} range of ${length} bytes at offset ${offset} is not a valid file range`);
  }
}

function runAsync(syscall: string, context: string, start: (cb: (err: unknown, result: number) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    start((err, result) => {
      if (err !== null && err !== undefined) reject(err);
      else if (result < 0) reject(new SyscallError(syscall, lastErrno(), context));
      else resolve();
    });
  });
}

/**
 * Deallocate [offset, offset+length): it reads as zeros and no longer takes disk space; the
 * file size is unchanged. Filesystems without hole punching fail with EOPNOTSUPP.
 */
export function punchHole(fd: number, offset: number, length: number): Promise<void> {
  checkRange('hole punch', offset, length);
  return runAsync('fallocate', `punching a hole of ${length} bytes at offset ${offset} of fd ${fd}`, (cb) =>
    fallocate.async(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, cb),
  );
}

/** Make [offset, offset+length) read as zeros, keeping (or making) it allocated. */
export function zeroRange(fd: number, offset: number, length: number): Promise<void> {
  checkRange('zero', offset, length);
  return runAsync('fallocate', `zeroing ${length} bytes at offset ${offset} of fd ${fd}`, (cb) =>
    fallocate.async(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length, cb),
  );
}

/** Flush the file's data (and the metadata needed to read it back) to stable storage. */
export function fdatasync(fd: number): Promise<void> {
  return runAsync('fdatasync', `flushing fd ${fd}`, (cb) => fdatasyncFn.async(fd, cb));
}

function seek(fd: number, offset: number, whence: number, what: string): number | null {
  const r = Number(lseek(fd, offset, whence));
  if (r >= 0) return r;
  const errno = lastErrno();
  if (errno === Errno.ENXIO) return null;
  throw new SyscallError('lseek', errno, `seeking the next ${what} from offset ${offset} of fd ${fd}`);
}

/** The first offset >= `offset` holding data, or null when only holes (or EOF) follow. */
export function seekData(fd: number, offset: number): number | null {
  return seek(fd, offset, SEEK_DATA, 'data');
}

/**
 * The first offset >= `offset` inside a hole; the end of file counts as a hole. Null when
 * `offset` is at or past the end of file.
 */
export function seekHole(fd: number, offset: number): number | null {
  return seek(fd, offset, SEEK_HOLE, 'hole');
}
