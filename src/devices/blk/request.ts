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
 */
import type { ChainReader } from '../../virtio/chain-io.ts';
import type { Request } from '../../virtio/serve.ts';
import type { BlockBackend } from '../../storage/block-backend.ts';
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
  decodeRequestHeader,
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

/** Where headers are copied to be decoded; decoding is synchronous, so one buffer serves all requests. */
const headerBytes = new Uint8Array(REQUEST_HEADER_SIZE);

/**
 * Parse and perform the request; never throws. The status byte is written by the caller. Only
 * backend calls can fail in here: a failure is logged and answered IOERR.
 */
async function execute(req: Request, target: RequestTarget): Promise<Status> {
  const { chain, reader, writer } = req;
  if (reader.read(headerBytes) < REQUEST_HEADER_SIZE) return IOERR;
  const header = decodeRequestHeader(headerBytes);
  // In-data is everything writable before the status byte.
  const inLen = chain.writableLength - STATUS_SIZE;
  const { backend } = target;
  let what = 'request';
  try {
    switch (header.type) {
      case RequestType.IN: {
        if (inLen % SECTOR_SIZE !== 0 || inLen > target.maxDataBytes) return IOERR;
        if (!inRange(header.sector, inLen >>> SECTOR_SHIFT, target.capacity)) return IOERR;
        what = 'read';
        await backend.read(header.sector * SECTOR_SIZE, writer.segments(inLen));
        return BlkStatus.OK;
      }
      case RequestType.OUT: {
        if (target.readOnly) return IOERR;
        const outLen = reader.remaining;
        if (outLen % SECTOR_SIZE !== 0 || outLen > target.maxDataBytes) return IOERR;
        if (!inRange(header.sector, outLen >>> SECTOR_SHIFT, target.capacity)) return IOERR;
        what = 'write';
        await backend.write(header.sector * SECTOR_SIZE, reader.segments(outLen));
        return await settle(target);
      }
      case RequestType.FLUSH:
        if (!target.flush) return UNSUPP;
        what = 'flush';
        await backend.flush();
        return BlkStatus.OK;
      case RequestType.GET_ID:
        writer.write(target.id.subarray(0, Math.min(inLen, ID_SIZE)));
        return BlkStatus.OK;
      case RequestType.DISCARD:
      case RequestType.WRITE_ZEROES: {
        const discard = header.type === RequestType.DISCARD;
        const limits = discard ? target.discard : target.writeZeroes;
        if (limits === undefined) return UNSUPP;
        if (target.readOnly) return IOERR;
        // The unmap flag belongs to write zeroes; on a discard it is UNSUPP like a reserved bit.
        const segs = rangeSegments(reader, limits, target.capacity, discard ? 0 : RangeFlag.UNMAP);
        if (!Array.isArray(segs)) return segs;
        const mayUnmap = target.writeZeroesMayUnmap;
        what = discard ? 'discard' : 'write zeroes';
        await Promise.all(
          segs.map((s) => {
            const offset = s.sector * SECTOR_SIZE;
            const length = s.numSectors * SECTOR_SIZE;
            return discard
              ? backend.discard(offset, length)
              : backend.writeZeroes(offset, length, mayUnmap && (s.flags & RangeFlag.UNMAP) !== 0);
          }),
        );
        return await settle(target);
      }
      default:
        // GET_LIFETIME, SECURE_ERASE and zoned requests belong to features never offered (§5.2.6.2).
        return UNSUPP;
    }
  } catch (err) {
    target.backendFailed(what, err);
    return IOERR;
  }
}

/** One status byte per value, so completing a request allocates nothing. */
const STATUS_BYTES = [BlkStatus.OK, BlkStatus.IOERR, BlkStatus.UNSUPP].map((s) => Uint8Array.of(s));

/**
 * Serve one request: perform it and write its status byte, the last byte of the writable part.
 * The used length is then the whole writable part: the bytes between the in-data and the status
 * byte that the device did not fill (a failed or short answer) are zeroed, because the used length
 * promises that many bytes written from the start (§2.7.8.2). A chain without room for a status
 * byte is not performed at all, since nothing could tell the driver how it went; it is returned
 * with length 0.
 */
export async function serveRequest(req: Request, target: RequestTarget): Promise<void> {
  if (req.chain.writableLength < STATUS_SIZE) return;
  const status = await execute(req, target);
  const { writer } = req;
  for (const gap of writer.segments(writer.remaining - STATUS_SIZE)) gap.fill(0);
  writer.write(STATUS_BYTES[status]);
}
