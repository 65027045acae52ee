/**
 * Positioned vectored I/O (preadv/pwritev) on raw iovec arrays, and the address of a byte view
 * to put in one. Used from an I/O thread (storage/io-thread.ts), where blocking is the point:
 * these calls wait for the disk, so they must never run on the event loop.
 */
import koffi from 'koffi';
import { declare } from './libc.ts';

type Vectored = (fd: number, iov: Uint8Array, iovcnt: number, offset: number) => number;

/** Fill the buffers of `iov` (struct iovec[iovcnt]) from byte `offset`; bytes read or -1. */
export const preadv = declare<Vectored>('intptr_t preadv(int fd, const void *iov, int iovcnt, int64_t offset)');
/** Write the buffers of `iov` at byte `offset`; bytes written or -1. */
export const pwritev = declare<Vectored>('intptr_t pwritev(int fd, const void *iov, int iovcnt, int64_t offset)');

/**
 * The address of `bytes`' first byte, valid in every thread of the process for as long as its
 * buffer lives. Asking for the buffer first moves a small typed array's bytes off V8's moving heap.
 */
export function addressOf(bytes: Uint8Array): bigint {
  if (bytes.buffer.byteLength === 0) return 0n;
  return koffi.address(bytes);
}
