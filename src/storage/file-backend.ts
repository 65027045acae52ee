/**
 * A block backend on a raw disk image file. Nothing blocks the event loop: reads and writes run
 * on I/O threads of their own (io-thread.ts), or on libuv's thread pool through node:fs/promises
 * when asked; either way they are vectored straight into and out of the request's guest buffers
 * (no bounce copy) and many proceed at once. Flush, discard and write-zeroes, rare next to reads
 * and writes, always take the thread pool.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { punchHole, zeroRange } from '../native/file-space.ts';
import { type BlockBackend, DiskImageError, SECTOR_SIZE } from './block-backend.ts';
import { IoThreads, MAX_IOVECS as THREAD_IOVECS, Op } from './io-thread.ts';

/**
 * Where reads and writes run: 'threads' on dedicated I/O threads (the default, measured faster:
 * docs/performance.md, "Threading"), 'thread-pool' through node:fs/promises.
 */
export type FileIo = 'threads' | 'thread-pool';

export interface FileBackendOptions {
  readonly readOnly?: boolean;
  readonly io?: FileIo;
  /** With io 'threads': how many, i.e. how many reads and writes reach the file at once (default 2). */
  readonly threads?: number;
  /**
   * With io 'threads': I/O threads shared with other backends (a SCSI target's many LUNs), which
   * this backend uses but does not close; `threads` is then ignored.
   */
  readonly sharedThreads?: IoThreads;
}

const DEFAULT_THREADS = 2;

/** Zeroes for filesystems without fallocate modes; one buffer repeated in the iovec, never written to. */
const ZEROES = new Uint8Array(64 * 1024);
/** Most iovecs per call through the thread pool: libuv caps a vectored call at IOV_MAX (1024 on Linux) and returns short. */
const POOL_IOVECS = 1024;

function errnoCode(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

/** The filesystem (or kernel) has no such fallocate mode: fall back to writing zeroes. */
function unsupported(err: unknown): boolean {
  const code = errnoCode(err);
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS';
}

const isDirectory = (path: string): DiskImageError => new DiskImageError(path, `disk image ${path} is a directory, not a file`);

function openError(path: string, readOnly: boolean, err: unknown): DiskImageError {
  switch (errnoCode(err)) {
    case 'ENOENT':
      return new DiskImageError(path, `disk image ${path} does not exist`);
    case 'ENOTDIR':
      return new DiskImageError(path, `disk image ${path} does not exist: part of its directory path is a file`);
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new DiskImageError(
        path,
        `disk image ${path} is not ${readOnly ? 'readable' : 'writable'} by this process` +
          (readOnly ? '' : ' (open it read-only to serve it as a read-only disk)'),
      );
    case 'EISDIR':
      return isDirectory(path);
    default:
      return new DiskImageError(path, `cannot open disk image ${path}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/**
 * Call `op` until all of `segments` went through: a vectored call may transfer less than asked
 * (IOV_MAX, signals), so the remainder is retried from where it stopped.
 */
async function vectored(
  segments: readonly Uint8Array[],
  position: number,
  maxIovecs: number,
  op: (iov: Uint8Array[], position: number) => Promise<number>,
  what: string,
): Promise<void> {
  let seg = 0;
  let off = 0;
  let pos = position;
  while (seg < segments.length) {
    const iov: Uint8Array[] = [];
    for (let i = seg; i < segments.length && iov.length < maxIovecs; i++) {
      const s = i === seg && off > 0 ? segments[i].subarray(off) : segments[i];
      if (s.length > 0) iov.push(s);
    }
    if (iov.length === 0) return;
    let done = await op(iov, pos);
    if (done === 0) throw new Error(`${what} at byte ${pos} transferred nothing (image truncated underneath?)`);
    pos += done;
    while (seg < segments.length && done >= segments[seg].length - off) {
      done -= segments[seg].length - off;
      seg++;
      off = 0;
    }
    off += done;
  }
}

export class FileBackend implements BlockBackend {
  /** Discard and unmapping write-zeroes punch holes where the filesystem can. */
  readonly canUnmap = true;
  /** Cleared the first time the filesystem refuses a fallocate mode, to stop asking. */
  private fallocateWorks = true;

  private constructor(
    private readonly file: FileHandle,
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
    /** The I/O threads; undefined when reads and writes take the thread pool. */
    private readonly threads: IoThreads | undefined,
    /** Whether the threads are this backend's own, to close with it. */
    private readonly ownsThreads: boolean,
  ) {}

  /** Open an existing raw image; throws DiskImageError naming the path when it cannot serve as a disk. */
  static async open(path: string, options: FileBackendOptions = {}): Promise<FileBackend> {
    const readOnly = options.readOnly ?? false;
    const threads = options.threads ?? DEFAULT_THREADS;
    if (!Number.isInteger(threads) || threads < 1 || threads > 64) {
      throw new RangeError(`I/O thread count ${threads} is not an integer from 1 to 64`);
    }
    let file: FileHandle;
    try {
      file = await open(path, readOnly ? 'r' : 'r+');
    } catch (err) {
      throw openError(path, readOnly, err);
    }
    try {
      const st = await file.stat();
      if (st.isDirectory()) throw isDirectory(path);
      if (!st.isFile()) throw new DiskImageError(path, `disk image ${path} is not a regular file`);
      if (st.size % SECTOR_SIZE !== 0) {
        throw new DiskImageError(
          path,
          `disk image ${path} is ${st.size} bytes, not a whole number of ${SECTOR_SIZE}-byte sectors`,
        );
      }
      if (options.io === 'thread-pool') return new FileBackend(file, path, st.size, readOnly, undefined, false);
      const shared = options.sharedThreads;
      return new FileBackend(file, path, st.size, readOnly, shared ?? new IoThreads(threads), shared === undefined);
    } catch (err) {
      await file.close();
      throw err instanceof DiskImageError ? err : openError(path, readOnly, err);
    }
  }

  read(offset: number, segments: readonly Uint8Array[]): Promise<void> {
    const what = `reading ${this.path}`;
    const { threads } = this;
    if (threads === undefined) {
      return vectored(segments, offset, POOL_IOVECS, async (iov, pos) => (await this.file.readv(iov, pos)).bytesRead, what);
    }
    return vectored(segments, offset, THREAD_IOVECS, (iov, pos) => threads.transfer(Op.read, this.file.fd, pos, iov), what);
  }

  write(offset: number, segments: readonly Uint8Array[]): Promise<void> {
    const what = `writing ${this.path}`;
    const { threads } = this;
    if (threads === undefined) {
      return vectored(segments, offset, POOL_IOVECS, async (iov, pos) => (await this.file.writev(iov, pos)).bytesWritten, what);
    }
    return vectored(segments, offset, THREAD_IOVECS, (iov, pos) => threads.transfer(Op.write, this.file.fd, pos, iov), what);
  }

  /** fdatasync: the data and the metadata needed to read it back, which is what a flush promises. */
  flush(): Promise<void> {
    return this.file.datasync();
  }

  /**
   * Deallocate the range (FALLOC_FL_PUNCH_HOLE). Discard may leave any contents (§5.2.6), but a
   * punched hole and the fallback alike read back as zeroes, which keeps behaviour predictable.
   */
  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length, true);
  }

  /** Punch a hole (mayUnmap) or zero the range in place (FALLOC_FL_ZERO_RANGE), else write zeroes. */
  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    if (length === 0) return;
    if (this.fallocateWorks) {
      try {
        await (mayUnmap ? punchHole : zeroRange)(this.file.fd, offset, length);
        return;
      } catch (err) {
        if (!unsupported(err)) throw err;
        this.fallocateWorks = false;
      }
    }
    const iov: Uint8Array[] = [];
    for (let left = length; left > 0; left -= ZEROES.length) iov.push(ZEROES.subarray(0, Math.min(left, ZEROES.length)));
    await this.write(offset, iov);
  }

  /** Waits for the I/O threads to finish what they were given, then closes the file. */
  async close(): Promise<void> {
    if (this.ownsThreads) await this.threads?.close();
    await this.file.close();
  }
}
