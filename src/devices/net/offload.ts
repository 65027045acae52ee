/**
 * Offload metadata rules (§5.1.6.2, §5.1.6.4): what a transmitted header may ask for under the
 * negotiated HOST_* features, and how a frame from the network is made acceptable to a driver
 * under the GUEST_* offloads it has enabled. Metadata is carried, never acted on, except that a
 * partial checksum is completed for a driver that cannot take one: §5.1.6.4 says the device
 * SHOULD supply fully checksummed packets then, and doing so costs one pass over the frame.
 */
import { hasFeature } from '../../virtio/constants.ts';
import type { DropReason } from './counters.ts';
import { ETH_HLEN, GsoType, HdrFlag, MAX_GSO_FRAME, NO_OFFLOAD, NetFeature, type Offload, VLAN_HLEN } from './wire.ts';

/** The feature that allows each GSO type: [host (transmit) feature, guest (receive) feature]. */
const GSO_FEATURES: ReadonlyMap<number, readonly [number, number]> = new Map([
  [GsoType.TCPV4, [NetFeature.HOST_TSO4, NetFeature.GUEST_TSO4]],
  [GsoType.TCPV6, [NetFeature.HOST_TSO6, NetFeature.GUEST_TSO6]],
  [GsoType.UDP, [NetFeature.HOST_UFO, NetFeature.GUEST_UFO]],
]);

/** Largest frame without GSO: the MTU plus an Ethernet header and one VLAN tag. */
export function plainFrameLimit(mtu: number): number {
  return mtu + ETH_HLEN + VLAN_HLEN;
}

/** Whether a checksum at csumStart + csumOffset (two bytes) lies inside a frame of `length`. */
function checksumInside(meta: Offload, length: number): boolean {
  return meta.csumStart + meta.csumOffset + 2 <= length;
}

/**
 * Why the device refuses a transmitted frame of `length` bytes with header `meta` under the
 * negotiated `features`, or undefined when it is acceptable (§5.1.6.2.1-2).
 */
export function transmitRefusal(meta: Offload, length: number, features: bigint, mtu: number): DropReason | undefined {
  if (length < ETH_HLEN) return 'runt';
  if (meta.flags & HdrFlag.NEEDS_CSUM) {
    if (!hasFeature(features, NetFeature.CSUM) || !checksumInside(meta, length)) return 'badOffload';
  }
  if (meta.gsoType === GsoType.NONE) return length > plainFrameLimit(mtu) ? 'oversize' : undefined;
  const gso = GSO_FEATURES.get(meta.gsoType & ~GsoType.ECN);
  if (gso === undefined || !hasFeature(features, gso[0]) || meta.gsoSize === 0) return 'badOffload';
  if (meta.gsoType & GsoType.ECN && !hasFeature(features, NetFeature.HOST_ECN)) return 'badOffload';
  return length > MAX_GSO_FRAME ? 'oversize' : undefined;
}

/**
 * The flags a transmitted header may carry on: NEEDS_CSUM only. DATA_VALID and RSC_INFO are for
 * the receive direction (§5.1.6.2.1: the driver MUST NOT set them) and unknown bits are ignored.
 */
export function transmitOffload(meta: Offload): Offload {
  const flags = meta.flags & HdrFlag.NEEDS_CSUM;
  if (flags === meta.flags) return meta;
  return flags === 0 && meta.gsoType === GsoType.NONE ? NO_OFFLOAD : { ...meta, flags };
}

/** A frame ready for a driver's receive buffer: possibly a checksummed copy, and its header. */
export interface Deliverable {
  readonly frame: Uint8Array;
  readonly meta: Offload;
}

const NO_FRAME = new Uint8Array(0);

/**
 * The Deliverable a device fills for each frame it receives, so that a frame costs no object:
 * valid until the next frame, like the frame itself (port.ts); a receive queue that keeps one
 * makes its own copy (rx.ts).
 */
export class Delivery implements Deliverable {
  frame: Uint8Array = NO_FRAME;
  meta: Offload = NO_OFFLOAD;

  set(frame: Uint8Array, meta: Offload): this {
    this.frame = frame;
    this.meta = meta;
    return this;
  }

  /** Let go of the frame once it was delivered (it was only lent). */
  clear(): void {
    this.set(NO_FRAME, NO_OFFLOAD);
  }
}

/**
 * Adapt a frame from the network to the guest offloads `enabled` (negotiated GUEST_* bits, as
 * GUEST_OFFLOADS_SET last left them), filling `into`, or say why it cannot be delivered (§5.1.6.4.1).
 */
export function receiveOffload(frame: Uint8Array, meta: Offload, enabled: bigint, into: Delivery): Delivery | DropReason {
  // The common case, a complete frame, needs no feature lookups.
  if (meta.flags === 0 && meta.gsoType === GsoType.NONE) return into.set(frame, meta);
  if (meta.gsoType !== GsoType.NONE) {
    const gso = GSO_FEATURES.get(meta.gsoType & ~GsoType.ECN);
    if (gso === undefined) return 'badOffload';
    if (!hasFeature(enabled, gso[1])) return 'offloadUnsupported';
    if (meta.gsoType & GsoType.ECN && !hasFeature(enabled, NetFeature.GUEST_ECN)) return 'offloadUnsupported';
  }
  const needsCsum = (meta.flags & HdrFlag.NEEDS_CSUM) !== 0;
  if (needsCsum && !checksumInside(meta, frame.length)) return 'badOffload';
  if (hasFeature(enabled, NetFeature.GUEST_CSUM)) {
    const flags = meta.flags & (HdrFlag.NEEDS_CSUM | HdrFlag.DATA_VALID);
    return into.set(frame, flags === meta.flags ? meta : { ...meta, flags });
  }
  // §5.1.6.4.1: without GUEST_CSUM, flags are zero and the packet is fully checksummed.
  if (!needsCsum) return into.set(frame, meta.flags === 0 ? meta : { ...meta, flags: 0 });
  if (meta.gsoType !== GsoType.NONE) return 'offloadUnsupported';
  return into.set(completeChecksum(frame, meta.csumStart, meta.csumOffset), NO_OFFLOAD);
}

/**
 * A copy of `frame` with the Internet checksum (RFC 1071) of [start, end) stored big-endian at
 * start + offset. The field holds the pseudo-header sum beforehand (§5.1.6.2), so summing over
 * it and complementing gives the final checksum.
 */
export function completeChecksum(frame: Uint8Array, start: number, offset: number): Uint8Array {
  const out = frame.slice();
  let sum = 0;
  let i = start;
  for (; i + 1 < out.length; i += 2) sum += (out[i] << 8) | out[i + 1];
  if (i < out.length) sum += out[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  // A result of 0 is stored as 0xffff, its ones' complement twin: for UDP, 0 would mean "no
  // checksum" (RFC 768), and for TCP the two are the same value.
  const csum = ~sum & 0xffff || 0xffff;
  out[start + offset] = csum >>> 8;
  out[start + offset + 1] = csum & 0xff;
  return out;
}
