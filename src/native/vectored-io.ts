/**
 * Positioned vectored I/O (preadv2/pwritev2) on raw iovec arrays, the iovec arrays themselves,
 * and what decides whether such a call may run on the event loop. Mostly used from an I/O thread
 * (storage/io-thread.ts), where blocking is the point; the event loop makes these calls itself
 * only where they cannot wait for a disk: on a file in memory (isMemoryFileSystem) or with
 * RWF_NOWAIT, which fails with EAGAIN rather than wait.
 */
import koffi from 'koffi';
import { declare } from './libc.ts';

type Vectored = (fd: number, iov: Uint8Array, iovcnt: number, offset: number, flags: number) => number;

/** Fill the buffers of `iov` (struct iovec[iovcnt]) from byte `offset`; bytes read or -1. */
export const preadv2 = declare<Vectored>('intptr_t preadv2(int fd, const void *iov, int iovcnt, int64_t offset, int flags)');
/** Write the buffers of `iov` at byte `offset`; bytes written or -1. */
export const pwritev2 = declare<Vectored>('intptr_t pwritev2(int fd, const void *iov, int iovcnt, int64_t offset, int flags)');

/** preadv2 flag: fail with EAGAIN instead of waiting (data not in the page cache); EOPNOTSUPP where the file cannot tell. */
export const RWF_NOWAIT = 0x08;

/**
 * The address of `bytes`' first byte, valid in every thread of the process for as long as its
 * buffer lives. Asking for the buffer first moves a small typed array's bytes off V8's moving heap.
 */
export function addressOf(bytes: Uint8Array): bigint {
  if (bytes.buffer.byteLength === 0) return 0n;
  return koffi.address(bytes);
}

/** sizeof(struct iovec) on 64-bit Linux. */
export const IOVEC_BYTES = 16;

/** A `struct iovec { void *iov_base; size_t iov_len; }` array of `capacity` entries over `buffer` (8-byte aligned). */
export class IovecArray {
  /** The array as bytes: what preadv2/pwritev2 are handed. */
  readonly bytes: Uint8Array;
  private readonly u64: BigUint64Array;
  private readonly u32: Uint32Array;

  constructor(
    readonly capacity: number,
    buffer: ArrayBufferLike = new ArrayBuffer(capacity * IOVEC_BYTES),
    byteOffset = 0,
  ) {
    this.bytes = new Uint8Array(buffer, byteOffset, capacity * IOVEC_BYTES);
    this.u64 = new BigUint64Array(buffer, byteOffset, capacity * 2);
    this.u32 = new Uint32Array(buffer, byteOffset, capacity * 4);
  }

  /** Point the first entries at `segments` (at most `capacity`, each kept alive while the call runs); returns their count. */
  set(segments: readonly Uint8Array[]): number {
    for (let i = 0; i < segments.length; i++) {
      this.u64[2 * i] = addressOf(segments[i]);
      // iov_len as two 32-bit halves: no BigInt per request (a segment is far below 4 GiB).
      this.u32[4 * i + 2] = segments[i].length;
      this.u32[4 * i + 3] = 0;
    }
    return segments.length;
  }
}

const fstatfs = declare<(fd: number, buf: Uint8Array) => number>('int fstatfs(int fd, _Out_ uint8_t *buf)');
/** struct statfs is 120 bytes on 64-bit Linux; f_type, a long, comes first. */
const STATFS_BYTES = 128;
/** f_type of filesystems whose files live in memory (linux/magic.h): tmpfs, ramfs, hugetlbfs. */
const MEMORY_FILE_SYSTEMS = new Set([0x01021994n, 0x858458f6n, 0x958458f6n]);

/** Whether `fd`'s file lives in memory, so reading or writing it never waits for a disk; false when unknown. */
export function isMemoryFileSystem(fd: number): boolean {
  const buf = new Uint8Array(STATFS_BYTES);
  if (fstatfs(fd, buf) !== 0) return false;
  return MEMORY_FILE_SYSTEMS.has(new DataView(buf.buffer).getBigUint64(0, true) & 0xffff_ffffn);
}
