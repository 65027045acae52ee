/**
 * The driver's control virtqueue (§5.1.6.5): each command is a class and command byte, its data,
 * and an ack the device writes. Every command checks first that the feature it needs was
 * negotiated, so a caller learns which one instead of a bare VIRTIO_NET_ERR.
 */
import { hasFeature } from '../../virtio/constants.ts';
import type { VirtioDriver } from '../../virtio/driver-core.ts';
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
  MAC_SIZE,
  type MacTable,
  NET_FEATURE_NAMES,
  NetFeature,
  VLAN_ID_MAX,
  encodeMacTable,
  formatMac,
} from './wire.ts';

/** The device answered a control command with VIRTIO_NET_ERR (or wrote no ack). */
export class NetControlError extends Error {
  constructor(what: string, ack: number) {
    super(`net: ${what} failed: the device answered ${ack === CtrlAck.ERR ? 'VIRTIO_NET_ERR' : `ack ${ack}`}`);
    this.name = 'NetControlError';
  }
}

/** A value no device writes as ack: set before submitting, it tells "never written" apart. */
const ACK_UNWRITTEN = 0xff;

/** §5.1.6.5.1: the receive modes, the feature each needs, and their names for messages. */
const RX_MODES: Readonly<Record<number, { readonly feature: number; readonly what: string }>> = {
  [CtrlRx.PROMISC]: { feature: NetFeature.CTRL_RX, what: 'promiscuous mode' },
  [CtrlRx.ALLMULTI]: { feature: NetFeature.CTRL_RX, what: 'all-multicast mode' },
  [CtrlRx.ALLUNI]: { feature: NetFeature.CTRL_RX_EXTRA, what: 'all-unicast mode' },
  [CtrlRx.NOMULTI]: { feature: NetFeature.CTRL_RX_EXTRA, what: 'no-multicast mode' },
  [CtrlRx.NOUNI]: { feature: NetFeature.CTRL_RX_EXTRA, what: 'no-unicast mode' },
  [CtrlRx.NOBCAST]: { feature: NetFeature.CTRL_RX_EXTRA, what: 'no-broadcast mode' },
};

export class NetControl {
  constructor(
    private readonly core: VirtioDriver,
    /** Queue pairs set up (N of §5.1.2, bounded by the driver): the most VQ_PAIRS_SET may ask for. */
    private readonly maxQueuePairs: number,
    /** §5.1.2: the control queue follows the device's N pairs, 2N (N = 1 without MQ). */
    private readonly ctrlIndex: number,
  ) {}

  /** Throw, naming the feature, unless `bit` was negotiated. */
  private require(bit: number, what: string): void {
    if (!hasFeature(this.core.features, bit)) {
      throw new Error(`net: ${what} needs VIRTIO_NET_F_${NET_FEATURE_NAMES[bit]}, which was not negotiated`);
    }
  }

  /** Throw unless `pairs` queue pairs can be asked for (MQ negotiated, 1..N). */
  checkQueuePairs(pairs: number): void {
    this.require(NetFeature.MQ, 'setting queue pairs');
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > this.maxQueuePairs) {
      throw new RangeError(`net: queue pair count ${pairs} is not an integer from 1 to ${this.maxQueuePairs}`);
    }
  }

  /** VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (§5.1.6.5.5); the receive queues of `pairs` must have buffers already. */
  async setQueuePairs(pairs: number): Promise<void> {
    this.checkQueuePairs(pairs);
    await this.command(CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, u16(pairs), `setting ${pairs} queue pairs`);
  }

  /** One of the VIRTIO_NET_CTRL_RX modes (CtrlRx) on or off. */
  async setRxMode(cmd: number, on: boolean): Promise<void> {
    const mode = RX_MODES[cmd];
    if (mode === undefined) throw new RangeError(`net: ${cmd} is not a VIRTIO_NET_CTRL_RX command`);
    this.require(mode.feature, mode.what);
    await this.command(CtrlClass.RX, cmd, Uint8Array.of(on ? 1 : 0), `turning ${mode.what} ${on ? 'on' : 'off'}`);
  }

  /** VIRTIO_NET_CTRL_MAC_TABLE_SET: the extra unicast and multicast addresses to receive. */
  async setMacTable(table: MacTable): Promise<void> {
    this.require(NetFeature.CTRL_RX, 'setting the MAC table');
    for (const mac of [...table.unicast, ...table.multicast]) {
      if (mac.length !== MAC_SIZE) throw new RangeError(`net: a MAC table entry of ${mac.length} bytes is not ${MAC_SIZE} bytes long`);
    }
    await this.command(CtrlClass.MAC, CtrlMac.TABLE_SET, encodeMacTable(table), 'setting the MAC table');
  }

  /** VIRTIO_NET_CTRL_MAC_ADDR_SET. */
  async setMac(mac: Uint8Array): Promise<void> {
    if (mac.length !== MAC_SIZE) throw new RangeError(`net: a MAC address of ${mac.length} bytes is not ${MAC_SIZE} bytes long`);
    this.require(NetFeature.CTRL_MAC_ADDR, 'setting the MAC address');
    await this.command(CtrlClass.MAC, CtrlMac.ADDR_SET, mac, `setting the MAC address to ${formatMac(mac)}`);
  }

  /** VIRTIO_NET_CTRL_VLAN_ADD / DEL. */
  async setVlan(id: number, member: boolean): Promise<void> {
    if (!Number.isInteger(id) || id < 0 || id > VLAN_ID_MAX) throw new RangeError(`net: VLAN id ${id} is not an integer from 0 to ${VLAN_ID_MAX}`);
    this.require(NetFeature.CTRL_VLAN, 'VLAN filtering');
    await this.command(CtrlClass.VLAN, member ? CtrlVlan.ADD : CtrlVlan.DEL, u16(id), `${member ? 'adding' : 'removing'} VLAN ${id}`);
  }

  /** VIRTIO_NET_CTRL_ANNOUNCE_ACK. */
  async ackAnnounce(): Promise<void> {
    this.require(NetFeature.GUEST_ANNOUNCE, 'acknowledging an announcement');
    await this.command(CtrlClass.ANNOUNCE, CtrlAnnounce.ACK, new Uint8Array(0), 'acknowledging an announcement');
  }

  /** VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: enable exactly the receive offloads in `offloads` (feature bit mask). */
  async setGuestOffloads(offloads: bigint): Promise<void> {
    this.require(NetFeature.CTRL_GUEST_OFFLOADS, 'setting guest offloads');
    const data = new Uint8Array(8);
    new DataView(data.buffer).setBigUint64(0, offloads, true);
    await this.command(CtrlClass.GUEST_OFFLOADS, CtrlGuestOffloads.SET, data, `setting guest offloads 0x${offloads.toString(16)}`);
  }

  /** Send a command and return the ack the device wrote (ACK_UNWRITTEN when it wrote none). */
  async rawCommand(cls: number, cmd: number, data: Uint8Array): Promise<number> {
    this.require(NetFeature.CTRL_VQ, 'a control command');
    const bytes = CTRL_HDR_SIZE + data.length + 1;
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(bytes, 16);
    if (addr === undefined) throw new Error(`net: DMA memory exhausted for a control command of ${bytes} bytes`);
    try {
      const block = memory.slice(addr, bytes);
      block[0] = cls;
      block[1] = cmd;
      block.set(data, CTRL_HDR_SIZE);
      block[bytes - 1] = ACK_UNWRITTEN;
      await this.core.queue(this.ctrlIndex).submit([{ addr, len: bytes - 1 }], [{ addr: addr + bytes - 1, len: 1 }]);
      return block[bytes - 1];
    } finally {
      dma.free(addr);
    }
  }

  private async command(cls: number, cmd: number, data: Uint8Array, what: string): Promise<void> {
    const ack = await this.rawCommand(cls, cmd, data);
    if (ack !== CtrlAck.OK) throw new NetControlError(what, ack);
  }
}

function u16(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, v >>> 8);
}
