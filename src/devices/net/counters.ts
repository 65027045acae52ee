/**
 * Packet counters of virtio-net, named from the driver's side as the spec names its queues: `tx`
 * is what the driver transmitted (transmitq), `rx` what the device delivered into receive
 * buffers. The device counts every frame it discards under the reason it was dropped; the driver
 * counts what it could not take from the device or give to it.
 */
import { doubleCounters } from '../../virtio/counters.ts';

export const DROP_REASONS = [
  /** A transmit buffer shorter than virtio_net_hdr. */
  'malformedBuffer',
  /** A transmitted frame shorter than an Ethernet header. */
  'runt',
  /** A frame beyond the negotiated limits: MTU + Ethernet + VLAN header, or MAX_GSO_FRAME with GSO. */
  'oversize',
  /** Offload metadata the negotiated features do not allow, or that points outside the frame. */
  'badOffload',
  /** A received frame needing an offload (GSO) the driver has not enabled. */
  'offloadUnsupported',
  /** The link is down (VIRTIO_NET_S_LINK_UP clear), or the driver is not running. */
  'linkDown',
  /** Refused by the receive filter (modes, MAC table, VLAN table). */
  'filtered',
  /** The driver posted no receive buffer and the bounded backlog was full. */
  'noBuffer',
  /** Without MRG_RXBUF, the posted buffer is smaller than the frame; with it, the whole ring is. */
  'bufferTooSmall',
  /** A control command with an unknown class or command, the wrong length, or an unnegotiated feature. */
  'badCommand',
] as const;

export type DropReason = (typeof DROP_REASONS)[number];

export class NetCounters {
  txPackets = 0;
  txBytes = 0;
  rxPackets = 0;
  rxBytes = 0;
  readonly drops: Record<DropReason, number> = Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>;

  constructor() {
    // Doubles from the start, so the data path is not deoptimized when they grow (counters.ts).
    doubleCounters(this);
  }

  drop(reason: DropReason): void {
    this.drops[reason]++;
  }

  /** Every drop, whatever the reason. */
  get dropped(): number {
    return DROP_REASONS.reduce((n, r) => n + this.drops[r], 0);
  }

  /** Every count by name, drops as `drops.<reason>`: the device-specific part of DeviceCounters. */
  snapshot(): Record<string, number> {
    const out: Record<string, number> = { txPackets: this.txPackets, txBytes: this.txBytes, rxPackets: this.rxPackets, rxBytes: this.rxBytes };
    for (const r of DROP_REASONS) out[`drops.${r}`] = this.drops[r];
    return out;
  }
}

/** The driver's counters (NetDriver.counters). */
export class NetDriverCounters {
  rxPackets = 0;
  rxBytes = 0;
  txPackets = 0;
  txBytes = 0;
  /** Buffers the device returned with an impossible header or length. */
  rxMalformed = 0;
  /** Frames dropped because the inbox was full. */
  rxInboxFull = 0;
  /** Frames a bridge could not transmit (too large, or the driver closed). */
  txFailed = 0;
}
