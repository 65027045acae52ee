/**
 * Anonymous shared memory with a file descriptor (memfd_create): the form of guest RAM that
 * can be passed to another process over a Unix socket and mapped there (vhost-user regions,
 * inflight buffers, dirty logs).
 */
import { declare } from './libc.ts';
import { closeFd } from './fd.ts';
import { check } from './syscall-error.ts';

const memfdCreate = declare<(name: string, flags: number) => number>('int memfd_create(const char *name, unsigned int flags)');
const ftruncateFn = declare<(fd: number, length: number) => number>('int ftruncate(int fd, int64_t length)');

const MFD_CLOEXEC = 0x1;
const MFD_ALLOW_SEALING = 0x2;

/** Set the size of the file behind `fd` (growing reads back as zeros). */
export function truncate(fd: number, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RangeError(`file size ${size} is not a non-negative integer`);
  }
  check('ftruncate', ftruncateFn(fd, size), `resizing fd ${fd} to ${size} bytes`);
}

/**
 * A new memfd of `size` zero bytes; returns its descriptor (close-on-exec, sealable so a
 * receiver can be promised the size will not shrink under its mapping).
 */
export function createMemfd(name: string, size: number): number {
  const fd = check('memfd_create', memfdCreate(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), `creating memfd "${name}"`);
  try {
    truncate(fd, size);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}
