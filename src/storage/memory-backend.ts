/**
 * A block backend held in host memory: for tests, benchmarks and scratch disks. Each call
 * copies synchronously when made, so a request's data is never touched after its promise settles.
 */
import { type BlockBackend, Op, SECTOR_SIZE, type TransferDone } from './block-backend.ts';

export interface MemoryBackendOptions {
  readonly readOnly?: boolean;
}

export class MemoryBackend implements BlockBackend {
  readonly bytes: Uint8Array;
  readonly readOnly: boolean;
  /** Memory cannot be deallocated piecemeal; discarded ranges are zeroed instead. */
  readonly canUnmap = false;

  /** A disk of `contents` (used in place, not copied) or of that many zero bytes. */
  constructor(contents: Uint8Array | number, options: MemoryBackendOptions = {}) {
    const bytes = typeof contents === 'number' ? new Uint8Array(contents) : contents;
    if (bytes.length % SECTOR_SIZE !== 0) {
      throw new RangeError(`in-memory disk of ${bytes.length} bytes is not a whole number of ${SECTOR_SIZE}-byte sectors`);
    }
    this.bytes = bytes;
    this.readOnly = options.readOnly ?? false;
  }

  get size(): number {
    return this.bytes.length;
  }

  read(offset: number, segments: readonly Uint8Array[]): Promise<void> {
    this.copy(Op.read, offset, segments);
    return Promise.resolve();
  }

  write(offset: number, segments: readonly Uint8Array[]): Promise<void> {
    this.copy(Op.write, offset, segments);
    return Promise.resolve();
  }

  /** Done before it returns. */
  transfer<T>(op: Op, offset: number, segments: readonly Uint8Array[], done: TransferDone<T>, tag: T): void {
    this.copy(op, offset, segments);
    done(tag, undefined);
  }

  private copy(op: Op, offset: number, segments: readonly Uint8Array[]): void {
    let at = offset;
    for (const s of segments) {
      if (op === Op.read) s.set(this.bytes.subarray(at, at + s.length));
      else this.bytes.set(s, at);
      at += s.length;
    }
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  writeZeroes(offset: number, length: number, _mayUnmap = false): Promise<void> {
    this.bytes.fill(0, offset, offset + length);
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
