/**
 * Where a block device keeps its bytes. Every call is asynchronous and a backend accepts many
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
  /** Fill `segments`, in order, with the bytes starting at `offset`. */
  read(offset: number, segments: readonly Uint8Array[]): Promise<void>;
  /** Store `segments`, in order, starting at `offset`. */
  write(offset: number, segments: readonly Uint8Array[]): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  /** The range's contents become unspecified; the backend may deallocate it. */
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
