/**
 * Anonymous shared memory with a file descriptor (memfd_create): the form of guest RAM that
 * can be passed to another process over a Unix socket and mapped there (vhost-user regions,
 * inflight buffers, dirty logs).
 */
import { declare } from './libc.ts';
import { closeFd, fcntl } from './fd.ts';
import { check } from './syscall-error.ts';

const memfdCreate = declare<(name: string, flags: number) => number>('int memfd_create(const char *name, unsigned int flags)');
const ftruncateFn = declare<(fd: number, length: number) => number>('int ftruncate(int fd, int64_t length)');

const MFD_CLOEXEC = 0x1;
const MFD_ALLOW_SEALING = 0x2;
// fcntl(2) file sealing: F_LINUX_SPECIFIC_BASE + 9, and the F_SEAL_* bits.
const F_ADD_SEALS = 1033;
const Seal = { SEAL: 0x1, SHRINK: 0x2, GROW: 0x4 } as const;

/** Set the size of the file behind `fd` (growing reads back as zeros). */
export function truncate(fd: number, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RangeError(`file size ${size} is not a non-negative integer`);
  }
  check('ftruncate', ftruncateFn(fd, size), `resizing fd ${fd} to ${size} bytes`);
}

/**
 * A new memfd of `size` zero bytes; returns its descriptor (close-on-exec, sealable so a
 * receiver can be promised the size will not shrink under its mapping). With `fixedSize` the
 * size is sealed at once (F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_SEAL): whoever else gets the
 * descriptor cannot truncate the memory under this process's mapping, where a later access
 * would be SIGBUS, nor lift the seals.
 */
export function createMemfd(name: string, size: number, options: { fixedSize?: boolean } = {}): number {
  const fd = check('memfd_create', memfdCreate(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), `creating memfd "${name}"`);
  try {
    truncate(fd, size);
    if (options.fixedSize === true) check('fcntl', fcntl(fd, F_ADD_SEALS, 'int', Seal.SHRINK | Seal.GROW | Seal.SEAL), `sealing the size of memfd "${name}"`);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}
