/**
 * Packet capture in the classic libpcap format (microsecond timestamps, LINKTYPE_ETHERNET),
 * which tcpdump, tshark and Wireshark read. `capture` wraps any NetPort so that every frame
 * through it, either way, is recorded.
 *
 * Records are written synchronously, so a capture is complete and in order at every moment
 * (a crashed process leaves a readable file) at the cost of a write per frame: it is a
 * debugging aid, not something to leave on a fast path.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { type FrameHandler, type NetPort } from './port.ts';
import type { Offload } from './wire.ts';

const MAGIC = 0xa1b2c3d4;
const VERSION_MAJOR = 2;
const VERSION_MINOR = 4;
export const LINKTYPE_ETHERNET = 1;
const GLOBAL_HEADER_SIZE = 24;
const RECORD_HEADER_SIZE = 16;
const DEFAULT_SNAPLEN = 65535;

export interface PcapOptions {
  /** Bytes kept per frame (default 65535); longer frames are truncated, their length recorded. */
  readonly snaplen?: number;
  /** Wall-clock milliseconds since the epoch for timestamps (default Date.now). */
  readonly clock?: () => number;
}

export class PcapWriter {
  private fd: number | undefined;
  private readonly snaplen: number;
  private readonly clock: () => number;
  private readonly recordHeader = new Uint8Array(RECORD_HEADER_SIZE);
  private readonly view = new DataView(this.recordHeader.buffer);

  /** Create (or truncate) `path` and write the file header. */
  constructor(
    readonly path: string,
    options: PcapOptions = {},
  ) {
    this.snaplen = options.snaplen ?? DEFAULT_SNAPLEN;
    if (!Number.isInteger(this.snaplen) || this.snaplen < 1 || this.snaplen > 0x7fff_ffff) {
      throw new RangeError(`pcap snapshot length ${this.snaplen} is not a positive 31-bit integer`);
    }
    this.clock = options.clock ?? Date.now;
    const header = new Uint8Array(GLOBAL_HEADER_SIZE);
    const v = new DataView(header.buffer);
    v.setUint32(0, MAGIC, true);
    v.setUint16(4, VERSION_MAJOR, true);
    v.setUint16(6, VERSION_MINOR, true);
    // thiszone and sigfigs stay 0: timestamps are UTC.
    v.setUint32(16, this.snaplen, true);
    v.setUint32(20, LINKTYPE_ETHERNET, true);
    this.fd = openSync(path, 'w');
    writeSync(this.fd, header);
  }

  /** Append one frame; ignored once closed. */
  write(frame: Uint8Array): void {
    if (this.fd === undefined) return;
    const ms = this.clock();
    const seconds = Math.floor(ms / 1000);
    const kept = Math.min(frame.length, this.snaplen);
    this.view.setUint32(0, seconds, true);
    this.view.setUint32(4, Math.floor((ms - seconds * 1000) * 1000), true);
    this.view.setUint32(8, kept, true);
    this.view.setUint32(12, frame.length, true);
    writeSync(this.fd, this.recordHeader);
    writeSync(this.fd, frame, 0, kept);
  }

  close(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }
}

/** One frame of a capture. */
export interface PcapRecord {
  /** Milliseconds since the epoch (microsecond precision). */
  readonly time: number;
  readonly data: Uint8Array;
  /** Length on the wire (more than data.length when truncated by the snapshot length). */
  readonly originalLength: number;
}

/** Parse a classic little-endian pcap file; throws one sentence saying what is wrong with it. */
export function readPcap(bytes: Uint8Array): { linkType: number; snaplen: number; records: PcapRecord[] } {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < GLOBAL_HEADER_SIZE || v.getUint32(0, true) !== MAGIC) {
    throw new Error('not a little-endian classic pcap file (bad magic number or short header)');
  }
  const records: PcapRecord[] = [];
  let at = GLOBAL_HEADER_SIZE;
  while (at < bytes.length) {
    if (bytes.length - at < RECORD_HEADER_SIZE) throw new Error(`pcap record header at byte ${at} is cut short`);
    const incl = v.getUint32(at + 8, true);
    if (bytes.length - at - RECORD_HEADER_SIZE < incl) throw new Error(`pcap record at byte ${at} claims ${incl} bytes past the end of the file`);
    records.push({
      time: v.getUint32(at, true) * 1000 + v.getUint32(at + 4, true) / 1000,
      // A copy as a plain Uint8Array, whatever subclass (Buffer) came in.
      data: new Uint8Array(bytes.subarray(at + RECORD_HEADER_SIZE, at + RECORD_HEADER_SIZE + incl)),
      originalLength: v.getUint32(at + 12, true),
    });
    at += RECORD_HEADER_SIZE + incl;
  }
  return { linkType: v.getUint32(20, true), snaplen: v.getUint32(16, true), records };
}

/**
 * `port` with every frame through it recorded to `writer`: frames sent out of it and frames
 * it receives, in the order they pass.
 */
export function capture(port: NetPort, writer: PcapWriter): NetPort {
  return {
    name: `${port.name}+pcap`,
    counters: port.counters,
    send(frame: Uint8Array, meta: Offload): void {
      writer.write(frame);
      port.send(frame, meta);
    },
    onReceive(handler: FrameHandler | undefined): void {
      port.onReceive(
        handler === undefined
          ? undefined
          : (frame, meta) => {
              writer.write(frame);
              handler(frame, meta);
            },
      );
    },
    close(): void {
      port.close();
    },
  };
}
