/**
 * src/storage/: where a disk's bytes live, shared by every device that presents a disk (the
 * virtio-blk device, each LUN of a SCSI target). It is named after what it holds, block storage,
 * not after a device: nothing here knows of virtqueues, requests or a wire format. A device parses
 * its requests, checks them against `size` and `readOnly`, then hands the guest's own buffers
 * here. The implementations are a raw image file served by I/O threads of its own
 * (file-backend.ts over io-thread.ts) and host memory (memory-backend.ts).
 */

/**
 * The unit every disk size is a multiple of: virtio-blk's sector (§5.2.4) and the smallest
 * logical block a SCSI disk reports.
 */
export const SECTOR_SIZE = 512;

/** Which way a transfer goes: into the request's buffers (read) or out of them (write). */
export const Op = { read: 0, write: 1 } as const;
export type Op = (typeof Op)[keyof typeof Op];

/** How a transfer ended: `err` undefined on success. Called with the tag the transfer was given. */
export type TransferDone<T> = (tag: T, err: Error | undefined) => void;

/**
 * Where a disk device keeps its bytes. Every call is asynchronous and a backend accepts many
 * calls in flight at once: the device issues one per request without waiting for the previous.
 * Offsets and lengths are in bytes; the device has already checked them against `size`.
 */
export interface BlockBackend {
  /** Size in bytes, a multiple of 512. */
  readonly size: number;
  /** Writes, discards and write-zeroes are refused by the device before they reach the backend. */
  readonly readOnly: boolean;
  /** Whether discard and write-zeroes with unmap may deallocate storage (config write_zeroes_may_unmap). */
  readonly canUnmap: boolean;
  /** Fill `segments` (typically the guest's buffers, written in place), in order, with the bytes starting at `offset`. */
  read(offset: number, segments: readonly Uint8Array[]): Promise<void>;
  /** Store `segments`, in order, starting at `offset`. */
  write(offset: number, segments: readonly Uint8Array[]): Promise<void>;
  /**
   * read() or write() without a promise, for a device's per-request path: `done(tag, err)` is
   * called once, possibly before transfer returns (a backend that finished at once: memory, a
   * file in memory or in the page cache). Passing a function made once and a tag per request
   * (the request itself) makes no closure per request. `done` must not throw.
   */
  transfer<T>(op: Op, offset: number, segments: readonly Uint8Array[], done: TransferDone<T>, tag: T): void;
  /**
   * I/O is expected soon (a front-end connected): start now whatever the first transfer would
   * otherwise wait for (a file's first I/O thread). Optional, cheap to call again.
   */
  prepare?(): void;
  /** Make every completed write durable (a file: fdatasync). */
  flush(): Promise<void>;
  /** The range's contents become unspecified; the backend may deallocate it (a file: punch a hole). */
  discard(offset: number, length: number): Promise<void>;
  /** The range reads back as zeroes; with `mayUnmap` the backend may deallocate it instead of writing. */
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  close(): Promise<void>;
}

/** A disk image that cannot serve as a block device; the message is one sentence naming the path. */
export class DiskImageError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(message);
    this.name = 'DiskImageError';
  }
}
