/**
 * The receive filter a virtio-net device applies before a frame reaches the driver: the
 * VIRTIO_NET_CTRL_RX modes (§5.1.6.5.1), the MAC filtering table and default address
 * (§5.1.6.5.2) and the VLAN filter table (§5.1.6.5.3). All of it is best effort by the spec;
 * here it is exact.
 */
import { BROADCAST_KEY, ETH_HLEN, ETH_P_8021Q, type MacTable, VLAN_ID_MAX, isGroupMac, macKey } from './wire.ts';

/**
 * Table entries kept per kind. A longer table makes the device accept all of that kind instead,
 * as §5.1.6.5.2 allows ("silently switch to allmulti or promiscuous mode"), so a driver cannot
 * make the device hold an unbounded table.
 */
export const MAC_TABLE_ENTRIES = 64;

export interface RxModes {
  promisc: boolean;
  allMulti: boolean;
  allUni: boolean;
  noMulti: boolean;
  noUni: boolean;
  noBcast: boolean;
}

export class RxFilter {
  readonly modes: RxModes = RxFilter.defaultModes();
  /** Key of the device's own address, or undefined while it has none (no MAC feature, none set). */
  private own: number | undefined;
  private unicast = new Set<number>();
  private multicast = new Set<number>();
  private unicastOverflow = false;
  private multicastOverflow = false;
  /** Bit per VLAN id; consulted only with `vlanFiltering`. */
  private readonly vlans = new Uint8Array((VLAN_ID_MAX + 1) / 8);

  constructor(
    /**
     * VIRTIO_NET_F_CTRL_RX negotiated: the driver can program the filter. Without it the driver
     * has no way to ask for multicast, so every group frame passes.
     */
    private readonly programmable: boolean,
    /** VIRTIO_NET_F_CTRL_VLAN negotiated: tagged frames pass only for ids in the table (§5.1.6.5.3). */
    private readonly vlanFiltering: boolean,
  ) {}

  static defaultModes(): RxModes {
    return { promisc: false, allMulti: false, allUni: false, noMulti: false, noUni: false, noBcast: false };
  }

  /** The default address of §5.1.6.5.2 (the configured `mac`, or the one MAC_ADDR_SET chose). */
  setAddress(mac: Uint8Array | undefined): void {
    this.own = mac === undefined ? undefined : macKey(mac);
  }

  /** VIRTIO_NET_CTRL_MAC_TABLE_SET: replaces both tables. */
  setTable(table: MacTable): void {
    this.unicastOverflow = table.unicast.length > MAC_TABLE_ENTRIES;
    this.multicastOverflow = table.multicast.length > MAC_TABLE_ENTRIES;
    this.unicast = this.unicastOverflow ? new Set() : new Set(table.unicast.map((m) => macKey(m)));
    this.multicast = this.multicastOverflow ? new Set() : new Set(table.multicast.map((m) => macKey(m)));
  }

  setVlan(id: number, member: boolean): void {
    const bit = 1 << (id & 7);
    if (member) this.vlans[id >> 3] |= bit;
    else this.vlans[id >> 3] &= ~bit;
  }

  /** Whether the driver should see `frame` (at least ETH_HLEN bytes, checked by the caller). */
  accepts(frame: Uint8Array): boolean {
    const m = this.modes;
    if (m.promisc) return true;
    if (this.vlanFiltering && frame.length >= ETH_HLEN + 2 && ((frame[12] << 8) | frame[13]) === ETH_P_8021Q) {
      const id = ((frame[14] << 8) | frame[15]) & VLAN_ID_MAX;
      if ((this.vlans[id >> 3] & (1 << (id & 7))) === 0) return false;
    }
    const dst = macKey(frame, 0);
    if (dst === BROADCAST_KEY) return !m.noBcast;
    if (isGroupMac(frame, 0)) {
      // NOMULTI wins over ALLMULTI; broadcast is not multicast here (§5.1.6.5.1).
      if (m.noMulti) return false;
      return !this.programmable || m.allMulti || this.multicastOverflow || this.multicast.has(dst);
    }
    if (m.noUni) return false;
    // Without an address of its own the device cannot tell whose a unicast frame is.
    return m.allUni || this.unicastOverflow || this.own === undefined || dst === this.own || this.unicast.has(dst);
  }
}
