/**
 * mmap of a shared file (a memfd from a peer, a log or inflight buffer) seen from JavaScript as
 * bytes, without copying: koffi.view wraps the mapped pages in an ArrayBuffer.
 *
 * Lifetime. An ArrayBuffer over munmapped pages would crash the process on the next access, and
 * JavaScript cannot detach an external ArrayBuffer. So unmap() never leaves a hole: it replaces
 * the shared pages in place with private anonymous zero pages (MAP_FIXED), which drops the
 * reference to the shared file at once; views that escaped keep working on harmless scratch
 * memory that nobody else sees. The address range itself is munmapped only when the ArrayBuffer
 * is garbage collected (a typed array keeps its buffer alive, so by then no view exists).
 * After unmap(), `bytes` throws, so code that asks the Mapping learns the truth.
 *
 * Touching a mapped page past the end of its file raises SIGBUS, which kills the process, so a
 * mapping that would reach past the end of a regular file is refused. A peer that shrinks the
 * file afterwards can still cause that; only its seals (F_SEAL_SHRINK, which QEMU's memfd
 * backends set) rule it out.
 */
import { fstatSync } from 'node:fs';
import koffi from 'koffi';
import { MAP_FAILED, declare, type Pointer } from './libc.ts';
import { SyscallError, check, lastErrno } from './syscall-error.ts';

const mmap = declare<(addr: Pointer | null, length: number, prot: number, flags: number, fd: number, offset: number) => Pointer>(
  'void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)',
);
const munmap = declare<(addr: Pointer, length: number) => number>('int munmap(void *addr, size_t length)');
const madvise = declare<(addr: Pointer, length: number, advice: number) => number>('int madvise(void *addr, size_t length, int advice)');
const sysconf = declare<(name: number) => number>('long sysconf(int name)');

const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;
const MAP_NORESERVE = 0x4000;
const MADV_DONTNEED = 4;
const MADV_REMOVE = 9;
const _SC_PAGESIZE = 30;

export const PAGE_SIZE = sysconf(_SC_PAGESIZE);

/**
 * What madvise should do with a range: 'dontneed' drops the pages from this mapping (a shared
 * mapping rereads the file afterwards, so contents survive); 'remove' frees the backing store
 * too, like punching a hole in the file (the range then reads as zeros everywhere).
 */
export type Advice = 'dontneed' | 'remove';

/** Address ranges to release once their ArrayBuffer is collected: see the module comment. */
const released = new FinalizationRegistry<{ addr: Pointer; size: number }>(({ addr, size }) => {
  munmap(addr, size);
});

export interface MapOptions {
  /** Offset in the file; a multiple of PAGE_SIZE. Default 0. */
  readonly offset?: number;
  /** Map read-only (writes through `bytes` then fault). Default false. */
  readonly readOnly?: boolean;
}

/** The size of the regular file behind `fd`; undefined for other kinds (and bad descriptors, which mmap reports). */
function regularFileSize(fd: number): number | undefined {
  try {
    const st = fstatSync(fd);
    return st.isFile() ? st.size : undefined;
  } catch {
    return undefined;
  }
}

export class Mapping {
  #bytes: Uint8Array | null;

  private constructor(
    private readonly addr: Pointer,
    readonly size: number,
  ) {
    const buffer = koffi.view(addr, size);
    released.register(buffer, { addr, size });
    this.#bytes = new Uint8Array(buffer);
  }

  /** Map `size` bytes of `fd` shared with every other mapping of the same file. */
  static shared(fd: number, size: number, options: MapOptions = {}): Mapping {
    const offset = options.offset ?? 0;
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`mapping size ${size} is not a positive integer`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) {
      throw new RangeError(`mapping offset ${offset} is not a non-negative multiple of the page size ${PAGE_SIZE}`);
    }
    const fileSize = regularFileSize(fd);
    if (fileSize !== undefined && fileSize < offset + size) {
      throw new RangeError(`the file behind fd ${fd} has ${fileSize} bytes, fewer than the mapping's end at ${offset + size}`);
    }
    const prot = options.readOnly === true ? PROT_READ : PROT_READ | PROT_WRITE;
    const addr = mmap(null, size, prot, MAP_SHARED, fd, offset);
    if (addr === MAP_FAILED) {
      throw new SyscallError('mmap', lastErrno(), `mapping ${size} bytes at offset ${offset} of fd ${fd}`);
    }
    return new Mapping(addr, size);
  }

  /** The mapped bytes; throws once unmapped. */
  get bytes(): Uint8Array {
    return this.live();
  }

  private live(): Uint8Array {
    if (this.#bytes === null) throw new Error(`mapping of ${this.size} bytes was unmapped`);
    return this.#bytes;
  }

  get mapped(): boolean {
    return this.#bytes !== null;
  }

  /** Apply `advice` to [offset, offset+length); offset must be page-aligned. */
  advise(offset: number, length: number, advice: Advice): void {
    this.live(); // the range of an unmapped mapping holds scratch pages: advice there is a mistake
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) {
      throw new RangeError(`madvise offset ${offset} is not a non-negative multiple of the page size ${PAGE_SIZE}`);
    }
    if (!Number.isSafeInteger(length) || length <= 0 || length > this.size - offset) {
      throw new RangeError(`madvise length ${length} at offset ${offset} does not fit the ${this.size}-byte mapping`);
    }
    const code = advice === 'dontneed' ? MADV_DONTNEED : MADV_REMOVE;
    check('madvise', madvise(this.addr + BigInt(offset), length, code), `advising ${advice} on ${length} bytes at offset ${offset}`);
  }

  /**
   * Release the shared pages now (see the module comment for why the address range lingers).
   * Calling it twice is harmless.
   */
  unmap(): void {
    if (this.#bytes === null) return;
    const scratch = mmap(this.addr, this.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (scratch === MAP_FAILED) {
      throw new SyscallError('mmap', lastErrno(), `replacing a ${this.size}-byte shared mapping with scratch pages`);
    }
    this.#bytes = null;
  }
}
