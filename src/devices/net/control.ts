/**
 * The virtio-net control queue (§5.1.6.5): each buffer holds class, command and
 * command-specific data (device-readable), then the ack byte (device-writable). Every command
 * is checked for its feature and its exact data length; anything else is answered
 * VIRTIO_NET_ERR and counted, and the device keeps going.
 */
import { hasFeature } from '../../virtio/constants.ts';
import type { Request } from '../../virtio/serve.ts';
import type { NetCounters } from './counters.ts';
import type { RxFilter, RxModes } from './filter.ts';
import {
  CTRL_HDR_SIZE,
  CtrlAck,
  CtrlAnnounce,
  CtrlClass,
  CtrlGuestOffloads,
  CtrlMac,
  CtrlMq,
  CtrlRx,
  CtrlVlan,
  GUEST_OFFLOAD_BITS,
  MAC_SIZE,
  NetFeature,
  VLAN_ID_MAX,
  VQ_PAIRS_MIN,
  decodeMacTable,
} from './wire.ts';

/**
 * Most command data read: a MAC table of 5000 entries per kind. Longer tables would only be
 * summarised as "accept all" anyway (filter.ts), and the bound keeps a driver from making the
 * device copy unbounded data.
 */
export const MAX_COMMAND_DATA = 8 + 2 * 5000 * MAC_SIZE;

/** What control commands act on: the device, through the few operations they need. */
export interface ControlTarget {
  /** Negotiated features. */
  readonly features: bigint;
  readonly filter: RxFilter;
  /** VIRTIO_NET_CTRL_MAC_ADDR_SET: the new default address (config `mac` updated before the ack). */
  setAddress(mac: Uint8Array): void;
  /** VIRTIO_NET_CTRL_ANNOUNCE_ACK: clear VIRTIO_NET_S_ANNOUNCE. */
  ackAnnounce(): void;
  /** VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET with a count already checked against max_virtqueue_pairs. */
  setQueuePairs(pairs: number): void;
  readonly maxQueuePairs: number;
  /** VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET with offloads already checked against the negotiated ones. */
  setGuestOffloads(offloads: bigint): void;
}

const RX_MODES: Readonly<Record<number, { mode: keyof RxModes; feature: number }>> = {
  [CtrlRx.PROMISC]: { mode: 'promisc', feature: NetFeature.CTRL_RX },
  [CtrlRx.ALLMULTI]: { mode: 'allMulti', feature: NetFeature.CTRL_RX },
  [CtrlRx.ALLUNI]: { mode: 'allUni', feature: NetFeature.CTRL_RX_EXTRA },
  [CtrlRx.NOMULTI]: { mode: 'noMulti', feature: NetFeature.CTRL_RX_EXTRA },
  [CtrlRx.NOUNI]: { mode: 'noUni', feature: NetFeature.CTRL_RX_EXTRA },
  [CtrlRx.NOBCAST]: { mode: 'noBcast', feature: NetFeature.CTRL_RX_EXTRA },
};

function u16(b: Uint8Array): number {
  return b[0] | (b[1] << 8);
}

/** Perform one command; true for VIRTIO_NET_OK. */
function perform(cls: number, cmd: number, data: Uint8Array, t: ControlTarget): boolean {
  const has = (bit: number): boolean => hasFeature(t.features, bit);
  switch (cls) {
    case CtrlClass.RX: {
      const rx = RX_MODES[cmd];
      // §5.1.6.5.1: one byte, 0 (off) or 1 (on).
      if (rx === undefined || !has(rx.feature) || data.length !== 1 || data[0] > 1) return false;
      t.filter.modes[rx.mode] = data[0] === 1;
      return true;
    }
    case CtrlClass.MAC: {
      if (cmd === CtrlMac.TABLE_SET && has(NetFeature.CTRL_RX)) {
        const table = decodeMacTable(data);
        if (table === undefined) return false;
        t.filter.setTable(table);
        return true;
      }
      if (cmd === CtrlMac.ADDR_SET && has(NetFeature.CTRL_MAC_ADDR) && data.length === MAC_SIZE) {
        t.setAddress(data);
        return true;
      }
      return false;
    }
    case CtrlClass.VLAN: {
      if ((cmd !== CtrlVlan.ADD && cmd !== CtrlVlan.DEL) || !has(NetFeature.CTRL_VLAN) || data.length !== 2) return false;
      const id = u16(data);
      if (id > VLAN_ID_MAX) return false;
      t.filter.setVlan(id, cmd === CtrlVlan.ADD);
      return true;
    }
    case CtrlClass.ANNOUNCE:
      if (cmd !== CtrlAnnounce.ACK || !has(NetFeature.GUEST_ANNOUNCE) || data.length !== 0) return false;
      t.ackAnnounce();
      return true;
    case CtrlClass.MQ: {
      if (cmd !== CtrlMq.VQ_PAIRS_SET || !has(NetFeature.MQ) || data.length !== 2) return false;
      // §5.1.6.5.5: the driver MUST NOT ask for 0 or more than max_virtqueue_pairs.
      const pairs = u16(data);
      if (pairs < VQ_PAIRS_MIN || pairs > t.maxQueuePairs) return false;
      t.setQueuePairs(pairs);
      return true;
    }
    case CtrlClass.GUEST_OFFLOADS: {
      if (cmd !== CtrlGuestOffloads.SET || !has(NetFeature.CTRL_GUEST_OFFLOADS) || data.length !== 8) return false;
      const offloads = new DataView(data.buffer, data.byteOffset, 8).getBigUint64(0, true);
      // §5.1.6.5.6.2: only offloads whose feature was negotiated.
      if ((offloads & ~guestOffloadMask(t.features)) !== 0n) return false;
      t.setGuestOffloads(offloads);
      return true;
    }
    default:
      return false;
  }
}

/** The negotiated guest offloads, the ones GUEST_OFFLOADS_SET may switch. */
export function guestOffloadMask(features: bigint): bigint {
  let mask = 0n;
  for (const bit of GUEST_OFFLOAD_BITS) {
    if (hasFeature(features, bit)) mask |= 1n << BigInt(bit);
  }
  return mask;
}

/** Serve one control buffer; a buffer without room for the ack goes back with nothing written. */
export function serveControl(req: Request, target: ControlTarget, counters: NetCounters): void {
  const { reader, writer } = req;
  const head = reader.readExact(CTRL_HDR_SIZE);
  const data = reader.remaining <= MAX_COMMAND_DATA ? reader.readExact(reader.remaining) : undefined;
  const ok = head !== undefined && data !== undefined && writer.remaining >= 1 && perform(head[0], head[1], data, target);
  if (!ok) counters.drop('badCommand');
  writer.write(Uint8Array.of(ok ? CtrlAck.OK : CtrlAck.ERR));
}
