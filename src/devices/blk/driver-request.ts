/**
 * The blk driver's requests (§5.2.6) as objects made once and reused: each owns a block of guest
 * memory laid out as header, data, status, the views of it and its descriptor segments, and is
 * the QueueRequest RequestQueue calls back. A request of the shape the last one had (a 4 KiB read
 * after a 4 KiB read) reuses all of it, so a steady stream of such requests allocates nothing.
 *
 * Memory: idle requests keep blocks up to KEEP_BYTES for reuse; larger ones go back at once.
 * When the allocator is exhausted the idle blocks are given back first; then a request waits for
 * another to finish, and with nothing in flight to wait for, it fails.
 */
import type { DmaAllocator } from '../../virtio/driver.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import type { Segment } from '../../virtio/queue.ts';
import type { QueueRequest } from '../../virtio/request-queue.ts';
import { REQUEST_HEADER_SIZE, STATUS_SIZE, encodeRequestHeader } from './wire.ts';

/** A status value no device writes: set before submitting, it tells "never written" apart. */
export const STATUS_UNWRITTEN = 0xff;
/** Largest block an idle request keeps (a 128 KiB transfer with header and status). */
const KEEP_BYTES = REQUEST_HEADER_SIZE + 128 * 1024 + STATUS_SIZE;
const EMPTY: Uint8Array = new Uint8Array(0);

/**
 * A read or write a caller keeps and starts again and again with BlkDriver.start: no promise and
 * nothing else is allocated per operation. Set the fields, start it, and start it again (with new
 * fields if wanted) once `done` was called.
 */
export interface BlkIo {
  /** Write `buffer` from `sector` on, or read into it. */
  write: boolean;
  sector: number;
  /** A multiple of 512 bytes, at most the driver's maxTransfer. */
  buffer: Uint8Array;
  /**
   * The operation finished: `err` undefined when the device answered OK. On a queue that has
   * failed (DEVICE_NEEDS_RESET, the back-end gone) it is called with the error from inside
   * start() itself, so a caller that starts the operation again from here must stop on an error,
   * or it recurses.
   */
  done(err: Error | undefined): void;
}

/** Called once per start with the request, whose status and in-data are valid during the call. */
export type RequestDone = (req: BlkRequest) => void;

export class BlkRequest implements QueueRequest {
  readonly out: Segment[] = [];
  readonly inSegs: Segment[] = [];
  /** Guest address and size of the block this request owns (0 bytes: none yet). */
  addr = 0;
  capacity = 0;
  private block: Uint8Array = EMPTY;
  /** The in-data part of the block, kept while the in-data length stays the same. */
  private inView: Uint8Array = EMPTY;
  type = 0;
  sector = 0;
  outLen = 0;
  inLen = 0;
  /** Whoever waits for this request; undefined while idle. */
  done: RequestDone | undefined;
  /** The caller's operation, for requests started with BlkDriver.start. */
  io: BlkIo | undefined;
  /** Set when the queue failed the request instead of the device completing it. */
  error: Error | undefined;
  /** The header as written, one object for every use. */
  private readonly header = { type: 0, reserved: 0, sector: 0 };

  constructor(private readonly pool: RequestPool) {}

  /** The device's status byte (STATUS_UNWRITTEN when it wrote none). */
  get status(): number {
    return this.block[REQUEST_HEADER_SIZE + this.outLen + this.inLen];
  }

  /** The in-data the device wrote (a view of guest memory, valid until the request is reused). */
  get inData(): Uint8Array {
    return this.inView;
  }

  /** The whole block, for the pool. */
  setBlock(addr: number, capacity: number, block: Uint8Array): void {
    this.addr = addr;
    this.capacity = capacity;
    this.block = block;
    this.inView = EMPTY;
    this.out.length = 0;
  }

  /**
   * Lay out header, `out` data and room for `inLen` bytes in the block (which holds them) and
   * describe them, each data segment at most `maxSegment` bytes.
   */
  prepare(type: number, sector: number, out: Uint8Array, inLen: number, maxSegment: number): void {
    const block = this.block;
    this.header.type = type;
    this.header.sector = sector;
    encodeRequestHeader(this.header, block);
    block.set(out, REQUEST_HEADER_SIZE);
    const shapeKept = this.out.length > 0 && out.length === this.outLen && inLen === this.inLen;
    this.type = type;
    this.sector = sector;
    this.outLen = out.length;
    this.inLen = inLen;
    const inAddr = REQUEST_HEADER_SIZE + out.length;
    block[inAddr + inLen] = STATUS_UNWRITTEN;
    this.error = undefined;
    if (shapeKept) return;
    this.inView = block.subarray(inAddr, inAddr + inLen);
    this.out.length = 0;
    this.inSegs.length = 0;
    this.out.push({ addr: this.addr, len: REQUEST_HEADER_SIZE });
    split(this.out, this.addr + REQUEST_HEADER_SIZE, out.length, maxSegment);
    split(this.inSegs, this.addr + inAddr, inLen, maxSegment);
    this.inSegs.push({ addr: this.addr + inAddr + inLen, len: STATUS_SIZE });
  }

  completed(): void {
    this.pool.finished(this);
  }

  failed(err: Error): void {
    this.error = err;
    this.pool.finished(this);
  }
}

/** Append descriptors for [addr, addr+len) to `segs`, each at most `max` bytes; none for an empty range. */
function split(segs: Segment[], addr: number, len: number, max: number): void {
  for (let at = 0; at < len; at += max) segs.push({ addr: addr + at, len: Math.min(max, len - at) });
}

export class RequestPool {
  private readonly idle: BlkRequest[] = [];
  private readonly waiters: (() => void)[] = [];
  private inUse = 0;

  constructor(
    private readonly dma: DmaAllocator,
    private readonly memory: GuestMemory,
  ) {}

  /** A request with a block of at least `bytes`, or undefined when there is no memory now (then wait with `whenRoom`). */
  take(bytes: number): BlkRequest | undefined {
    const req = this.idle.pop() ?? new BlkRequest(this);
    if (req.capacity < bytes && !this.grow(req, bytes)) {
      this.idle.push(req);
      return undefined;
    }
    this.inUse++;
    return req;
  }

  /** A request of `bytes` once others have given back enough; fails when none is in flight. */
  async whenRoom(bytes: number): Promise<BlkRequest> {
    for (;;) {
      if (this.inUse === 0) throw new Error(`blk: DMA memory exhausted: no room for a request of ${bytes} bytes`);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
      const req = this.take(bytes);
      if (req !== undefined) return req;
    }
  }

  /** The queue is done with `req`: tell whoever waits, then make it idle. */
  finished(req: BlkRequest): void {
    const done = req.done;
    req.done = undefined;
    try {
      done?.(req);
    } finally {
      this.inUse--;
      if (req.capacity > KEEP_BYTES) this.drop(req);
      this.idle.push(req);
      this.waiters.shift()?.();
    }
  }

  /** Give every idle block back to the allocator. */
  release(): void {
    for (const req of this.idle) this.drop(req);
  }

  /** Give `req` a block of `bytes`, giving back its own and, when the allocator is short, every idle one. */
  private grow(req: BlkRequest, bytes: number): boolean {
    this.drop(req);
    let addr = this.dma.alloc(bytes, 16);
    if (addr === undefined) {
      this.release();
      addr = this.dma.alloc(bytes, 16);
    }
    if (addr === undefined) return false;
    req.setBlock(addr, bytes, this.memory.slice(addr, bytes));
    return true;
  }

  private drop(req: BlkRequest): void {
    if (req.capacity === 0) return;
    this.dma.free(req.addr);
    req.setBlock(0, 0, EMPTY);
  }
}
