/**
 * virtio-vsock's wire format (VIRTIO 1.2 §5.10): the guest CID in the configuration space, the
 * 44-byte packet header every rx and tx buffer starts with (§5.10.6), and the event queue's
 * records.
 */
import { ConfigLayout, type ValuesOf } from '../../virtio/config-layout.ts';

/** §5.10.3 feature bits. */
export const VsockFeature = {
  STREAM: 0,
  SEQPACKET: 1,
} as const;

/** §5.10.4: le64 guest_cid (only the low 32 bits are used). */
export const VSOCK_CONFIG = new ConfigLayout('virtio-vsock', {
  guest_cid: { offset: 0, width: 8, about: "the guest's context ID" },
});
export type VsockConfig = ValuesOf<typeof VSOCK_CONFIG>;

/** §5.10.4: CIDs 0, 1, 2 and 0xffffffff are reserved; the host is CID 2. */
export const HOST_CID = 2;
export const MIN_GUEST_CID = 3;
export const MAX_GUEST_CID = 0xffff_fffe;

/** §5.10.2 queue indexes. */
export const RXQ = 0;
export const TXQ = 1;
export const EVENTQ = 2;

/** §5.10.6 op. */
export const Op = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;

/** §5.10.6 type. */
export const SocketType = { STREAM: 1, SEQPACKET: 2 } as const;

/** §5.10.6.6 flags of a SEQPACKET RW packet: the last packet of a message, of a record. */
export const Seq = { EOM: 1, EOR: 2 } as const;

/**
 * Largest SEQPACKET message the device carries either way. It is the receive buffer a SEQPACKET
 * connection advertises, so a Linux sender refuses a larger message itself (EMSGSIZE: a message
 * must fit the peer's buf_alloc); and it passes whole through a Unix SOCK_SEQPACKET socket on a
 * default system (net.core.wmem_default 212992 bytes).
 */
export const MAX_MESSAGE = 128 * 1024;

/**
 * A SEQPACKET message arriving in parts (the payloads of RW packets up to the one flagged
 * VIRTIO_VSOCK_SEQ_EOM, §5.10.6.6), for both halves. Empty parts are not kept: credit does not
 * count them, so a peer could otherwise send them without end.
 */
export class MessageParts {
  private parts: Uint8Array[] = [];
  /** Bytes of the message so far. */
  bytes = 0;

  add(part: Uint8Array): void {
    if (part.length > 0) this.parts.push(part);
    this.bytes += part.length;
  }

  /** The message in one piece; the next one starts empty. */
  take(): Uint8Array {
    const message = new Uint8Array(this.bytes);
    let at = 0;
    for (const part of this.parts) {
      message.set(part, at);
      at += part.length;
    }
    this.clear();
    return message;
  }

  clear(): void {
    this.parts = [];
    this.bytes = 0;
  }
}

/** One SEQPACKET message for a host end; `eor` is the sender's record mark (SEQ_EOR). */
export interface SeqpacketMessage {
  readonly bytes: Uint8Array;
  readonly eor: boolean;
}

/** A host program sent a message longer than a SEQPACKET connection carries. */
export class OversizeMessage extends Error {
  constructor(
    readonly length: number,
    readonly limit: number,
  ) {
    super(`a ${length}-byte message exceeds the ${limit}-byte limit of a vsock SEQPACKET connection`);
  }
}

/** §5.10.6.4 SHUTDOWN flags. */
export const Shutdown = { RCV: 1, SEND: 2 } as const;

/** §5.10.6.3 event id. */
export const EVENT_TRANSPORT_RESET = 0;
export const EVENT_BYTES = 4;

/** §5.10.6 struct virtio_vsock_hdr. */
export interface PacketHeader {
  readonly srcCid: number;
  readonly dstCid: number;
  readonly srcPort: number;
  readonly dstPort: number;
  /** Payload bytes following the header. */
  readonly len: number;
  readonly type: number;
  readonly op: number;
  readonly flags: number;
  /** Receive buffer space of the sender's socket (§5.10.6.3.1). */
  readonly bufAlloc: number;
  /** Bytes the sender's socket has consumed of what it received. */
  readonly fwdCnt: number;
}

export const HEADER_BYTES = 44;

export function encodeHeader(h: PacketHeader, out: Uint8Array = new Uint8Array(HEADER_BYTES)): Uint8Array {
  const v = new DataView(out.buffer, out.byteOffset, HEADER_BYTES);
  v.setBigUint64(0, BigInt(h.srcCid), true);
  v.setBigUint64(8, BigInt(h.dstCid), true);
  v.setUint32(16, h.srcPort >>> 0, true);
  v.setUint32(20, h.dstPort >>> 0, true);
  v.setUint32(24, h.len >>> 0, true);
  v.setUint16(28, h.type, true);
  v.setUint16(30, h.op, true);
  v.setUint32(32, h.flags >>> 0, true);
  v.setUint32(36, h.bufAlloc >>> 0, true);
  v.setUint32(40, h.fwdCnt >>> 0, true);
  return out;
}

/** The header in the first 44 bytes; CIDs above 2^53 become 2^53 (no such CID is valid anyway). */
export function decodeHeader(bytes: Uint8Array): PacketHeader | undefined {
  if (bytes.length < HEADER_BYTES) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const cid = (at: number): number => {
    const big = v.getBigUint64(at, true);
    return big >= 2n ** 53n ? 2 ** 53 : Number(big);
  };
  return {
    srcCid: cid(0),
    dstCid: cid(8),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}
