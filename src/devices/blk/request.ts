/**
 * Executing one virtio-blk request (§5.2.6) from a validated descriptor chain. The chain's shape
 * was checked by the ring (every buffer inside guest memory, readable before writable); what it
 * says is still hostile, so every field is checked here. A malformed request is answered with an
 * error status and never harms the device: only ring violations (VirtqueueError) do that.
 *
 * A request is `struct virtio_blk_req`: a 16-byte header and any out-data in the device-readable
 * part; any in-data and then the status byte in the device-writable part. With VERSION_1 the
 * split into descriptors is arbitrary (§2.6.4 message framing), so parsing goes through the chain
 * reader/writer and the status byte is simply the last writable byte. Requests come from the
 * queue server (virtio/serve.ts), whose reader and writer go inert once the device is reset.
 *
 * Reads and writes, nearly every request, cost no promise and no closure: the backend reports
 * through a completion function made once per device (BlockBackend.transfer), which writes the
 * status and finishes the request, before the handler returns when the backend was that quick.
 * The rare requests (flush, discard, write zeroes, a write that must be made durable) use promises.
 */
import type { ChainReader } from '../../virtio/chain-io.ts';
import { LATER, type Request, type RequestHandler } from '../../virtio/serve.ts';
import { type BlockBackend, Op, type TransferDone } from '../../storage/block-backend.ts';
import {
  BlkStatus,
  ID_SIZE,
  RANGE_SEGMENT_SIZE,
  REQUEST_HEADER_SIZE,
  RangeFlag,
  RequestType,
  SECTOR_SHIFT,
  SECTOR_SIZE,
  STATUS_SIZE,
  type RangeSegment,
  decodeRangeSegments,
} from './wire.ts';

/** Limits on DISCARD or WRITE_ZEROES, as the configuration space states them (§5.2.4). */
export interface RangeLimits {
  readonly maxSectors: number;
  readonly maxSegments: number;
}

/** What a request runs against: the disk, the negotiated features and the limits the device announced. */
export interface RequestTarget {
  readonly backend: BlockBackend;
  /** Disk size in sectors. */
  readonly capacity: number;
  /** VIRTIO_BLK_F_RO offered: every write is refused (§5.2.6.2). */
  readonly readOnly: boolean;
  /** The GET_ID answer, ID_SIZE bytes. */
  readonly id: Uint8Array;
  /** Most data bytes an IN or OUT request may carry (seg_max × size_max, when offered). */
  readonly maxDataBytes: number;
  /** FLUSH negotiated. */
  readonly flush: boolean;
  /** DISCARD negotiated, with its limits. */
  readonly discard: RangeLimits | undefined;
  /** WRITE_ZEROES negotiated, with its limits. */
  readonly writeZeroes: RangeLimits | undefined;
  /** Whether a write-zeroes request with the unmap flag may deallocate (write_zeroes_may_unmap). */
  readonly writeZeroesMayUnmap: boolean;
  /**
   * Whether a write must be durable before it completes (§5.2.6.2): asked at completion time,
   * since the driver may flip `writeback` while writes are in flight.
   */
  writethrough(): boolean;
  /** A backend call failed: the request answers IOERR; this is for the log. */
  backendFailed(what: string, err: unknown): void;
}

/** A status byte value (BlkStatus). */
type Status = number;

const IOERR: Status = BlkStatus.IOERR;
const UNSUPP: Status = BlkStatus.UNSUPP;

/** Whether `count` sectors from `sector` lie inside a disk of `capacity` sectors, overflow-safe. */
function inRange(sector: number, count: number, capacity: number): boolean {
  return count <= capacity && sector <= capacity - count;
}

/** A write completed: make it durable first when the cache is writethrough (§5.2.6.2). */
async function settle(target: RequestTarget): Promise<Status> {
  if (target.writethrough()) await target.backend.flush();
  return BlkStatus.OK;
}

/**
 * Check a DISCARD or WRITE_ZEROES payload (§5.2.6.2): a non-empty whole number of segments, at
 * most max_*_seg of them, no reserved flag (UNSUPP), no unmap on discard (UNSUPP), each at most
 * max_*_sectors and inside the disk (IOERR). Returns the segments or the error status.
 */
function rangeSegments(
  reader: ChainReader,
  limits: RangeLimits,
  capacity: number,
  allowedFlags: number,
): RangeSegment[] | Status {
  const len = reader.remaining;
  if (len === 0 || len % RANGE_SEGMENT_SIZE !== 0 || len / RANGE_SEGMENT_SIZE > limits.maxSegments) return IOERR;
  const payload = reader.readExact(len);
  if (payload === undefined) return IOERR;
  const segs = decodeRangeSegments(payload);
  if (segs.some((s) => (s.flags & ~allowedFlags) !== 0)) return UNSUPP;
  for (const s of segs) {
    if (s.numSectors > limits.maxSectors || !inRange(s.sector, s.numSectors, capacity)) return IOERR;
  }
  return segs;
}

/**
 * Perform every segment of a DISCARD or WRITE_ZEROES. The request completes only once all of
 * them ended, failed or not: answering at the first failure would let the driver reuse the range
 * while other segments still write to it.
 */
async function ranges(target: RequestTarget, segs: readonly RangeSegment[], discard: boolean): Promise<Status> {
  const { backend } = target;
  const mayUnmap = target.writeZeroesMayUnmap;
  const results = await Promise.allSettled(
    segs.map((s) => {
      const offset = s.sector * SECTOR_SIZE;
      const length = s.numSectors * SECTOR_SIZE;
      return discard
        ? backend.discard(offset, length)
        : backend.writeZeroes(offset, length, mayUnmap && (s.flags & RangeFlag.UNMAP) !== 0);
    }),
  );
  const failure = results.find((r) => r.status === 'rejected');
  if (failure !== undefined) throw failure.reason;
  return settle(target);
}

/** Where headers are copied to be decoded; decoding is synchronous, so one buffer serves all requests. */
const headerBytes = new Uint8Array(REQUEST_HEADER_SIZE);
const headerView = new DataView(headerBytes.buffer);

/** One status byte per value, so completing a request allocates nothing. */
const STATUS_BYTES = [BlkStatus.OK, BlkStatus.IOERR, BlkStatus.UNSUPP].map((s) => Uint8Array.of(s));

/**
 * Write the status byte, the last byte of the writable part. The used length is then the whole
 * writable part: the bytes between the in-data and the status byte that the device did not fill
 * (a failed or short answer) are zeroed, because the used length promises that many bytes
 * written from the start (§2.7.8.2).
 */
function answer(req: Request, status: Status): void {
  const { writer } = req;
  const gap = writer.remaining - STATUS_SIZE;
  if (gap > 0) for (const view of writer.segments(gap)) view.fill(0);
  writer.write(STATUS_BYTES[status]);
}

/** A backend call failed: logged, answered IOERR. */
function failed(target: RequestTarget, what: string, err: unknown): Status {
  target.backendFailed(what, err);
  return IOERR;
}

/** A rare request, performed with promises: its status, never a rejection. */
async function answerLater(req: Request, target: RequestTarget, what: string, status: Promise<Status>): Promise<void> {
  let result: Status;
  try {
    result = await status;
  } catch (err) {
    result = failed(target, what, err);
  }
  answer(req, result);
}

/**
 * The request handler of a device's queues, for requests against `target`. Each request is
 * parsed and performed; its status byte is written when it is done. A chain without room for a
 * status byte is not performed at all, since nothing could tell the driver how it went; it is
 * returned with length 0. Never throws: a malformed request is answered with an error status, a
 * failed backend call is logged and answered IOERR.
 */
export function requestHandler(target: RequestTarget): RequestHandler {
  const { backend } = target;
  const readDone: TransferDone<Request> = (req, err) => {
    answer(req, err === undefined ? BlkStatus.OK : failed(target, 'read', err));
    req.finish();
  };
  const writeDone: TransferDone<Request> = (req, err) => {
    if (err === undefined && target.writethrough()) {
      void answerLater(req, target, 'flush', settle(target)).then(req.finish);
      return;
    }
    answer(req, err === undefined ? BlkStatus.OK : failed(target, 'write', err));
    req.finish();
  };

  return (req) => {
    const { chain, reader, writer } = req;
    if (chain.writableLength < STATUS_SIZE) return;
    if (reader.read(headerBytes) < REQUEST_HEADER_SIZE) return answer(req, IOERR);
    const type = headerView.getUint32(0, true);
    // Above 2^53 a sector loses precision, but it is then far beyond any disk and refused as such.
    const sector = headerView.getUint32(12, true) * 0x1_0000_0000 + headerView.getUint32(8, true);
    // In-data is everything writable before the status byte.
    const inLen = chain.writableLength - STATUS_SIZE;
    switch (type) {
      case RequestType.IN: {
        if (inLen % SECTOR_SIZE !== 0 || inLen > target.maxDataBytes) return answer(req, IOERR);
        if (!inRange(sector, inLen >>> SECTOR_SHIFT, target.capacity)) return answer(req, IOERR);
        backend.transfer(Op.read, sector * SECTOR_SIZE, writer.segments(inLen), readDone, req);
        return LATER;
      }
      case RequestType.OUT: {
        if (target.readOnly) return answer(req, IOERR);
        const outLen = reader.remaining;
        if (outLen % SECTOR_SIZE !== 0 || outLen > target.maxDataBytes) return answer(req, IOERR);
        if (!inRange(sector, outLen >>> SECTOR_SHIFT, target.capacity)) return answer(req, IOERR);
        backend.transfer(Op.write, sector * SECTOR_SIZE, reader.segments(outLen), writeDone, req);
        return LATER;
      }
      case RequestType.FLUSH:
        if (!target.flush) return answer(req, UNSUPP);
        return answerLater(req, target, 'flush', backend.flush().then(() => BlkStatus.OK));
      case RequestType.GET_ID:
        writer.write(target.id.subarray(0, Math.min(inLen, ID_SIZE)));
        return answer(req, BlkStatus.OK);
      case RequestType.DISCARD:
      case RequestType.WRITE_ZEROES: {
        const discard = type === RequestType.DISCARD;
        const limits = discard ? target.discard : target.writeZeroes;
        if (limits === undefined) return answer(req, UNSUPP);
        if (target.readOnly) return answer(req, IOERR);
        // The unmap flag belongs to write zeroes; on a discard it is UNSUPP like a reserved bit.
        const segs = rangeSegments(reader, limits, target.capacity, discard ? 0 : RangeFlag.UNMAP);
        if (!Array.isArray(segs)) return answer(req, segs);
        return answerLater(req, target, discard ? 'discard' : 'write zeroes', ranges(target, segs, discard));
      }
      default:
        // GET_LIFETIME, SECURE_ERASE and zoned requests belong to features never offered (§5.2.6.2).
        return answer(req, UNSUPP);
    }
  };
}
