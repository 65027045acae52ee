/**
 * A block backend on a raw disk image file. Nothing blocks the event loop on a disk: reads and
 * writes run on I/O threads of their own (io-thread.ts), or on libuv's thread pool through
 * node:fs/promises when asked; either way they are vectored straight into and out of the
 * request's guest buffers (no bounce copy) and many proceed at once. Flush, discard and
 * write-zeroes, rare next to reads and writes, always take the thread pool.
 *
 * A small read or write that cannot wait for a disk is made on the event loop instead (with I/O
 * threads only): any on a file in memory (tmpfs, ramfs, hugetlbfs), and a read whose pages are all
 * in the page cache, which preadv2's RWF_NOWAIT finds out by failing with EAGAIN otherwise. That
 * costs a memory copy, where handing it to a thread costs a wake-up each way: see "blk on the
 * event loop" in docs/performance.md.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { punchHole, zeroRange } from '../native/file-space.ts';
import { Errno, SyscallError, lastErrno } from '../native/syscall-error.ts';
import { IovecArray, RWF_NOWAIT, isMemoryFileSystem, preadv2, pwritev2 } from '../native/vectored-io.ts';
import { type BlockBackend, DiskImageError, SECTOR_SIZE, type TransferDone } from './block-backend.ts';
import { type CallDone, IoThreads, MAX_IOVECS as THREAD_IOVECS, Op } from './io-thread.ts';

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
  /**
   * With io 'threads': whether small reads and writes may run on the event loop when they cannot
   * wait for a disk (default true; see the module comment).
   */
  readonly inline?: boolean;
}

/**
 * Which reads and writes run on the event loop: all small ones (a file in memory), small reads
 * with RWF_NOWAIT (the page cache answers, or EAGAIN sends them to a thread), or none.
 */
type Inline = 'memory' | 'page-cache' | 'none';

/**
 * The largest read or write made on the event loop: a copy of this size takes a few
 * microseconds, against tens for a round trip through an I/O thread on a busy machine.
 */
const INLINE_MAX_BYTES = 128 * 1024;

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

/** A settled promise's two halves, the tag of a promise made over transfer(). */
interface Settle {
  resolve(): void;
  reject(err: Error): void;
}

const settle: TransferDone<Settle> = (p, err) => (err === undefined ? p.resolve() : p.reject(err));

/** The segments from segment `seg`, byte `off` on: at most `max` of them, empty ones left out. */
function rest(segments: readonly Uint8Array[], seg: number, off: number, max: number): Uint8Array[] {
  const iov: Uint8Array[] = [];
  for (let i = seg; i < segments.length && iov.length < max; i++) {
    const s = i === seg && off > 0 ? segments[i].subarray(off) : segments[i];
    if (s.length > 0) iov.push(s);
  }
  return iov;
}

/**
 * One read or write through the I/O threads, resumed from where a vectored call stopped short
 * (more segments than a call takes, end of file, a signal).
 */
class ThreadedTransfer<T> {
  private seg = 0;
  private off = 0;

  constructor(
    private readonly threads: IoThreads,
    private readonly what: string,
    private readonly op: Op,
    private readonly fd: number,
    private readonly segments: readonly Uint8Array[],
    private position: number,
    private readonly done: TransferDone<T>,
    private readonly tag: T,
  ) {}

  /** Submit what is left; `first` is the whole request when it fits one call as it is. */
  next(first?: readonly Uint8Array[]): void {
    const iov = first ?? rest(this.segments, this.seg, this.off, THREAD_IOVECS);
    if (iov.length === 0) this.done(this.tag, undefined);
    else this.threads.submit(this.op, this.fd, this.position, iov, ThreadedTransfer.called, this as ThreadedTransfer<unknown>);
  }

  /** Skip `bytes` already transferred. */
  advance(bytes: number): void {
    let done = bytes;
    this.position += done;
    const { segments } = this;
    while (this.seg < segments.length && done >= segments[this.seg].length - this.off) {
      done -= segments[this.seg].length - this.off;
      this.seg++;
      this.off = 0;
    }
    this.off += done;
  }

  private static readonly called: CallDone<ThreadedTransfer<unknown>> = (t, result) => {
    if (typeof result !== 'number') t.done(t.tag, result);
    else if (result === 0) t.done(t.tag, new Error(`${t.what} at byte ${t.position} transferred nothing (image truncated underneath?)`));
    else {
      t.advance(result);
      t.next();
    }
  };
}

export class FileBackend implements BlockBackend {
  /** Discard and unmapping write-zeroes punch holes where the filesystem can. */
  readonly canUnmap = true;
  /** Cleared the first time the filesystem refuses a fallocate mode, to stop asking. */
  private fallocateWorks = true;
  /** Which transfers run on the event loop; 'page-cache' falls to 'none' if the file refuses RWF_NOWAIT. */
  private inline: Inline;
  /** The iovec array of calls made on the event loop, one at a time. */
  private readonly iov = new IovecArray(THREAD_IOVECS);
  private readonly readWhat: string;
  private readonly writeWhat: string;

  private constructor(
    private readonly file: FileHandle,
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
    /** The I/O threads; undefined when reads and writes take the thread pool. */
    private readonly threads: IoThreads | undefined,
    /** Whether the threads are this backend's own, to close with it. */
    private readonly ownsThreads: boolean,
    inline: boolean,
  ) {
    this.inline = threads === undefined || !inline ? 'none' : isMemoryFileSystem(file.fd) ? 'memory' : 'page-cache';
    this.readWhat = `reading ${path}`;
    this.writeWhat = `writing ${path}`;
  }

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
      const inline = options.inline ?? true;
      if (options.io === 'thread-pool') return new FileBackend(file, path, st.size, readOnly, undefined, false, false);
      const shared = options.sharedThreads;
      return new FileBackend(file, path, st.size, readOnly, shared ?? new IoThreads(threads), shared === undefined, inline);
    } catch (err) {
      await file.close();
      throw err instanceof DiskImageError ? err : openError(path, readOnly, err);
    }
  }

  read(offset: number, segments: readonly Uint8Array[]): Promise<void> {
    if (this.threads === undefined) {
      return vectored(segments, offset, POOL_IOVECS, async (iov, pos) => (await this.file.readv(iov, pos)).bytesRead, this.readWhat);
    }
    return new Promise((resolve, reject) => this.transfer(Op.read, offset, segments, settle, { resolve, reject }));
  }

  write(offset: number, segments: readonly Uint8Array[]): Promise<void> {
    if (this.threads === undefined) {
      return vectored(segments, offset, POOL_IOVECS, async (iov, pos) => (await this.file.writev(iov, pos)).bytesWritten, this.writeWhat);
    }
    return new Promise((resolve, reject) => this.transfer(Op.write, offset, segments, settle, { resolve, reject }));
  }

  transfer<T>(op: Op, offset: number, segments: readonly Uint8Array[], done: TransferDone<T>, tag: T): void {
    const { threads } = this;
    if (threads === undefined) {
      (op === Op.read ? this.read(offset, segments) : this.write(offset, segments)).then(
        () => done(tag, undefined),
        (err: Error) => done(tag, err),
      );
      return;
    }
    let bytes = 0;
    let whole = segments.length <= THREAD_IOVECS;
    for (const s of segments) {
      bytes += s.length;
      if (s.length === 0) whole = false;
    }
    const what = op === Op.read ? this.readWhat : this.writeWhat;
    if (whole && bytes <= INLINE_MAX_BYTES && (this.inline === 'memory' || (this.inline === 'page-cache' && op === Op.read))) {
      const n = this.transferInline(op, offset, segments);
      if (n === bytes) {
        done(tag, undefined);
        return;
      }
      if (n instanceof Error) {
        done(tag, n);
        return;
      }
      // Short (pages not all cached, end of file): the rest goes to a thread, which waits for it.
      const t = new ThreadedTransfer(threads, what, op, this.file.fd, segments, offset, done, tag);
      t.advance(n);
      t.next();
      return;
    }
    new ThreadedTransfer(threads, what, op, this.file.fd, segments, offset, done, tag).next(whole ? segments : undefined);
  }

  /**
   * Start the first I/O thread now rather than with the first transfer that needs one: loading
   * a Node worker takes from 70 ms to over a second on a busy machine ("The first I/O of a disk"
   * in docs/performance.md), and a guest's first reads follow its driver's DRIVER_OK within
   * milliseconds. Also for a file in memory, whose transfers above INLINE_MAX_BYTES still take a
   * thread.
   */
  prepare(): void {
    this.threads?.warm();
  }

  /**
   * One vectored call on the event loop: bytes transferred (0 when it would have to wait), or
   * the call's error. A file that cannot tell whether it would wait stops being asked.
   */
  private transferInline(op: Op, offset: number, segments: readonly Uint8Array[]): number | Error {
    const count = this.iov.set(segments);
    const flags = this.inline === 'memory' ? 0 : RWF_NOWAIT;
    for (;;) {
      const n = (op === Op.read ? preadv2 : pwritev2)(this.file.fd, this.iov.bytes, count, offset, flags);
      if (n >= 0) return n;
      const errno = lastErrno();
      if (errno === Errno.EINTR) continue;
      if (errno === Errno.EAGAIN) return 0;
      if (errno === Errno.EOPNOTSUPP) {
        this.inline = 'none';
        return 0;
      }
      return new SyscallError(op === Op.read ? 'preadv2' : 'pwritev2', errno, `at byte ${offset} of ${this.path}`);
    }
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
