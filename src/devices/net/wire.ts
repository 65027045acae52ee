/**
 * The virtio-net wire format (§5.1): feature bits, `struct virtio_net_hdr`, the configuration
 * space, and the control queue's classes, commands and payloads. Device, driver and the
 * back-ends that carry offload metadata (tunnel, TAP) all encode and decode through this module.
 */
import { ConfigLayout, type ValuesOf } from '../../virtio/config-layout.ts';
import { bitNames, type FeatureRequirement, missingRequirement } from '../../virtio/features.ts';

/** §5.1.3 feature bits (bit numbers) of VIRTIO 1.2. */
export const NetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  CTRL_RX_EXTRA: 20,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
  SPEED_DUPLEX: 63,
} as const;

/** The checksum and segmentation offloads, both directions, and the command that switches them. */
export const NET_OFFLOAD_FEATURES: bigint = [
  NetFeature.CSUM,
  NetFeature.GUEST_CSUM,
  NetFeature.CTRL_GUEST_OFFLOADS,
  NetFeature.GUEST_TSO4,
  NetFeature.GUEST_TSO6,
  NetFeature.GUEST_ECN,
  NetFeature.GUEST_UFO,
  NetFeature.HOST_TSO4,
  NetFeature.HOST_TSO6,
  NetFeature.HOST_ECN,
  NetFeature.HOST_UFO,
].reduce((acc, bit) => acc | (1n << BigInt(bit)), 0n);

/** Names for log and error messages (features.ts describeFeatures). */
export const NET_FEATURE_NAMES: Readonly<Record<number, string>> = bitNames(NetFeature);

/**
 * §5.1.3.1 feature dependencies: each feature and what it requires (all of `all`, and at least
 * one of `any` when given). A device offering a feature without its requirements is misbuilt.
 */
export const NET_FEATURE_REQUIREMENTS: readonly FeatureRequirement[] = [
  { feature: NetFeature.GUEST_TSO4, all: [NetFeature.GUEST_CSUM] },
  { feature: NetFeature.GUEST_TSO6, all: [NetFeature.GUEST_CSUM] },
  { feature: NetFeature.GUEST_ECN, any: [NetFeature.GUEST_TSO4, NetFeature.GUEST_TSO6] },
  { feature: NetFeature.GUEST_UFO, all: [NetFeature.GUEST_CSUM] },
  { feature: NetFeature.HOST_TSO4, all: [NetFeature.CSUM] },
  { feature: NetFeature.HOST_TSO6, all: [NetFeature.CSUM] },
  { feature: NetFeature.HOST_ECN, any: [NetFeature.HOST_TSO4, NetFeature.HOST_TSO6] },
  { feature: NetFeature.HOST_UFO, all: [NetFeature.CSUM] },
  { feature: NetFeature.CTRL_RX, all: [NetFeature.CTRL_VQ] },
  { feature: NetFeature.CTRL_VLAN, all: [NetFeature.CTRL_VQ] },
  { feature: NetFeature.CTRL_RX_EXTRA, all: [NetFeature.CTRL_VQ] },
  { feature: NetFeature.GUEST_ANNOUNCE, all: [NetFeature.CTRL_VQ] },
  { feature: NetFeature.MQ, all: [NetFeature.CTRL_VQ] },
  { feature: NetFeature.CTRL_MAC_ADDR, all: [NetFeature.CTRL_VQ] },
];

/** The first feature in `features` whose §5.1.3.1 requirements are missing, or undefined. */
export function missingNetRequirement(features: bigint): string | undefined {
  return missingRequirement(features, NET_FEATURE_REQUIREMENTS, NET_FEATURE_NAMES);
}

/** The guest offloads VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET may switch (§5.1.6.5.6.1), as feature bits. */
export const GUEST_OFFLOAD_BITS: readonly number[] = [
  NetFeature.GUEST_CSUM,
  NetFeature.GUEST_TSO4,
  NetFeature.GUEST_TSO6,
  NetFeature.GUEST_ECN,
  NetFeature.GUEST_UFO,
];

/** §5.1.6 `flags` of virtio_net_hdr. */
export const HdrFlag = {
  NEEDS_CSUM: 1,
  DATA_VALID: 2,
  RSC_INFO: 4,
} as const;

/** §5.1.6 `gso_type` of virtio_net_hdr; ECN is a bit added to one of the others. */
export const GsoType = {
  NONE: 0,
  TCPV4: 1,
  UDP: 3,
  TCPV6: 4,
  ECN: 0x80,
} as const;

/**
 * Size of `struct virtio_net_hdr` for this modern-only framework: 12 bytes, num_buffers
 * included, since VERSION_1 is always negotiated (§5.1.6.1; the 10-byte header is legacy
 * without MRG_RXBUF, and the hash fields need HASH_REPORT, which is not offered).
 */
export const NET_HDR_SIZE = 12;

/** Ethernet header: destination, source, EtherType. */
export const ETH_HLEN = 14;
/** An 802.1Q tag between source and EtherType. */
export const VLAN_HLEN = 4;
export const ETH_P_8021Q = 0x8100;
/** Largest frame with segmentation offload (§5.1.6.3: 14 + 40 IPv6 header + 65535 payload). */
export const MAX_GSO_FRAME = 65589;
/** The Ethernet MTU assumed when the device does not report one. */
export const DEFAULT_MTU = 1500;

/** Per-packet offload metadata: the fields of virtio_net_hdr except num_buffers. */
export interface Offload {
  readonly flags: number;
  readonly gsoType: number;
  readonly hdrLen: number;
  readonly gsoSize: number;
  readonly csumStart: number;
  readonly csumOffset: number;
}

/** A fully checksummed, unsegmented frame. */
export const NO_OFFLOAD: Offload = Object.freeze({ flags: 0, gsoType: GsoType.NONE, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 });

/** `struct virtio_net_hdr`. */
export interface NetHeader extends Offload {
  /** Buffers the received packet spans (§5.1.6.4); 0 on transmit. */
  readonly numBuffers: number;
}

function putU16(b: Uint8Array, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
}

function takeU16(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8);
}

/** Encode a header into the first NET_HDR_SIZE bytes of `out`. */
export function encodeNetHeader(h: Offload, numBuffers: number, out: Uint8Array = new Uint8Array(NET_HDR_SIZE)): Uint8Array {
  out[0] = h.flags;
  out[1] = h.gsoType;
  putU16(out, 2, h.hdrLen);
  putU16(out, 4, h.gsoSize);
  putU16(out, 6, h.csumStart);
  putU16(out, 8, h.csumOffset);
  putU16(out, 10, numBuffers);
  return out;
}

/** Decode the first NET_HDR_SIZE bytes of `b` (the caller checked the length). */
export function decodeNetHeader(b: Uint8Array): NetHeader {
  return {
    flags: b[0],
    gsoType: b[1],
    hdrLen: takeU16(b, 2),
    gsoSize: takeU16(b, 4),
    csumStart: takeU16(b, 6),
    csumOffset: takeU16(b, 8),
    numBuffers: takeU16(b, 10),
  };
}

/** num_buffers of the header in the first NET_HDR_SIZE bytes of `b`. */
export function decodeNumBuffers(b: Uint8Array): number {
  return takeU16(b, 10);
}

/**
 * The offload fields of the header in the first NET_HDR_SIZE bytes of `b` (num_buffers aside):
 * NO_OFFLOAD when they are all zero, as for nearly every frame, so the common case allocates nothing.
 */
export function decodeOffload(b: Uint8Array): Offload {
  for (let i = 0; i < 10; i++) {
    if (b[i] !== 0) {
      const { numBuffers: _, ...offload } = decodeNetHeader(b);
      return offload;
    }
  }
  return NO_OFFLOAD;
}

/** §5.1.4 status bits. */
export const NetStatus = {
  LINK_UP: 1,
  ANNOUNCE: 2,
} as const;

/** §5.1.4 duplex values. */
export const Duplex = {
  HALF: 0,
  FULL: 1,
  UNKNOWN: 0xff,
} as const;

/** §5.1.4 speed meaning "unknown". */
export const SPEED_UNKNOWN = 0xffff_ffff;

export const MAC_SIZE = 6;

/**
 * `struct virtio_net_config` (§5.1.4) through `duplex`: the RSS fields that follow exist only
 * with RSS or HASH_REPORT, never offered here. A field is meaningful only with its feature.
 */
export const NET_CONFIG = new ConfigLayout('virtio-net', {
  mac: { offset: 0, bytes: MAC_SIZE, feature: NetFeature.MAC },
  status: { offset: 6, width: 2, feature: NetFeature.STATUS },
  maxVirtqueuePairs: { offset: 8, width: 2, feature: NetFeature.MQ },
  mtu: { offset: 10, width: 2, feature: NetFeature.MTU },
  speed: { offset: 12, width: 4, feature: NetFeature.SPEED_DUPLEX, about: 'Mbit/s' },
  duplex: { offset: 16, width: 1, feature: NetFeature.SPEED_DUPLEX },
});

export type NetConfig = ValuesOf<typeof NET_CONFIG>;

/** §5.1.6.5 control classes and their commands. */
export const CtrlClass = {
  RX: 0,
  MAC: 1,
  VLAN: 2,
  ANNOUNCE: 3,
  MQ: 4,
  GUEST_OFFLOADS: 5,
} as const;

export const CtrlRx = {
  PROMISC: 0,
  ALLMULTI: 1,
  ALLUNI: 2,
  NOMULTI: 3,
  NOUNI: 4,
  NOBCAST: 5,
} as const;

export const CtrlMac = {
  TABLE_SET: 0,
  ADDR_SET: 1,
} as const;

export const CtrlVlan = {
  ADD: 0,
  DEL: 1,
} as const;

export const CtrlAnnounce = {
  ACK: 0,
} as const;

export const CtrlMq = {
  VQ_PAIRS_SET: 0,
} as const;

export const CtrlGuestOffloads = {
  SET: 0,
} as const;

/** §5.1.6.5 ack values. */
export const CtrlAck = {
  OK: 0,
  ERR: 1,
} as const;

/** `class` and `command` precede every control command's data. */
export const CTRL_HDR_SIZE = 2;
/** §5.1.6.5.5 VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN / MAX. */
export const VQ_PAIRS_MIN = 1;
export const VQ_PAIRS_MAX = 0x8000;
export const VLAN_ID_MAX = 4095;


/** The two tables of VIRTIO_NET_CTRL_MAC_TABLE_SET (§5.1.6.5.2): unicast, then multicast. */
export interface MacTable {
  readonly unicast: readonly Uint8Array[];
  readonly multicast: readonly Uint8Array[];
}

export function encodeMacTable(t: MacTable): Uint8Array {
  const out = new Uint8Array(8 + (t.unicast.length + t.multicast.length) * MAC_SIZE);
  let at = 0;
  for (const list of [t.unicast, t.multicast]) {
    new DataView(out.buffer).setUint32(at, list.length, true);
    at += 4;
    for (const mac of list) {
      out.set(mac.subarray(0, MAC_SIZE), at);
      at += MAC_SIZE;
    }
  }
  return out;
}

/** Decode the command data, or undefined when the counts do not fill it exactly. */
export function decodeMacTable(b: Uint8Array): MacTable | undefined {
  const lists: Uint8Array[][] = [];
  let at = 0;
  for (let i = 0; i < 2; i++) {
    if (b.length - at < 4) return undefined;
    const n = new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true);
    at += 4;
    if (n > (b.length - at) / MAC_SIZE) return undefined;
    const list: Uint8Array[] = [];
    for (let k = 0; k < n; k++, at += MAC_SIZE) list.push(b.slice(at, at + MAC_SIZE));
    lists.push(list);
  }
  return at === b.length ? { unicast: lists[0], multicast: lists[1] } : undefined;
}

// --- Ethernet addresses ---

/** A MAC address as a number (48 bits fit a double exactly), for map keys. */
export function macKey(b: Uint8Array, at = 0): number {
  return ((b[at] << 8) | b[at + 1]) * 0x1_0000_0000 + (((b[at + 2] << 24) | (b[at + 3] << 16) | (b[at + 4] << 8) | b[at + 5]) >>> 0);
}

export const BROADCAST_KEY = 0xffff_ffff_ffff;

/** Group (multicast or broadcast) addresses have the I/G bit, the low bit of the first byte. */
export function isGroupMac(b: Uint8Array, at = 0): boolean {
  return (b[at] & 1) === 1;
}

export function formatMac(b: Uint8Array): string {
  return Array.from(b.subarray(0, MAC_SIZE), (x) => x.toString(16).padStart(2, '0')).join(':');
}

/** Parse "52:54:00:12:34:56"; throws one sentence naming the text when it is not a MAC address. */
export function parseMac(text: string): Uint8Array {
  const parts = text.split(/[:-]/);
  if (parts.length !== MAC_SIZE || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) {
    throw new RangeError(`"${text}" is not a MAC address of six hexadecimal bytes`);
  }
  return Uint8Array.from(parts, (p) => parseInt(p, 16));
}

/** A random locally administered unicast address (§5.1.5: a driver without MAC makes one up). */
export function randomMac(random: (bytes: Uint8Array) => void): Uint8Array {
  const mac = new Uint8Array(MAC_SIZE);
  random(mac);
  mac[0] = (mac[0] & 0xfe) | 0x02;
  return mac;
}
