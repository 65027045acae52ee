/**
 * The Ethernet segment `paravirt serve net` runs: one learning switch, one virtio-net device per
 * vhost-user socket plugged into it, and optionally an uplink (a TAP interface or a UDP tunnel to
 * another switch) plugged into it too. A libvirt or QEMU user starts one process per segment and
 * gives each virtual machine its own socket, as with a host bridge and its tap ports.
 */
import { NetDevice } from './device.ts';
import { PcapWriter } from './pcap.ts';
import { type FrameHandler, type NetPort, patch } from './port.ts';
import { L2Switch } from './switch.ts';
import { TapPort } from './tap.ts';
import { type Endpoint, UdpTunnel } from './tunnel.ts';
import { MAC_SIZE, type Offload } from './wire.ts';

export interface SegmentOptions {
  /** The switch's name, which prefixes its port names in logs. */
  readonly switchName: string;
  /** How many devices (vhost-user sockets) to plug in. */
  readonly devices: number;
  /** Queue pairs of each device. */
  readonly queuePairs: number;
  /** The first device's address; the next devices count up from it. Without it, each driver picks its own. */
  readonly mac?: Uint8Array;
  /** A host TAP interface to plug in (created if missing; needs CAP_NET_ADMIN). */
  readonly tap?: string;
  /** A UDP tunnel to plug in. */
  readonly tunnel?: { readonly local: Endpoint; readonly peer: Endpoint };
  /** Record every frame entering the switch to this classic pcap file. */
  readonly pcap?: string;
}

export interface Segment {
  readonly switch: L2Switch;
  /** One device per socket, in the order of the sockets. */
  readonly devices: readonly NetDevice[];
  /** The TAP or tunnel port, if any. */
  readonly uplinks: readonly NetPort[];
  /** Close the uplinks, the switch ports and the capture file. */
  close(): void;
}

/** `mac` + n, carrying into the higher bytes, so several devices get neighbouring addresses. */
export function nthMac(mac: Uint8Array, n: number): Uint8Array {
  const out = mac.slice();
  let carry = n;
  for (let i = MAC_SIZE - 1; i >= 0 && carry > 0; i--) {
    const sum = out[i] + carry;
    out[i] = sum & 0xff;
    carry = Math.floor(sum / 256);
  }
  return out;
}

/**
 * `port` whose sent frames are also written to `writer`. Every frame enters the switch through
 * exactly one port's send, so recording the switch side of each port captures each frame once;
 * what the switch delivers passes unrecorded.
 */
function recordingSent(port: NetPort, writer: PcapWriter): NetPort {
  return {
    name: port.name,
    counters: port.counters,
    send(frame: Uint8Array, meta: Offload): void {
      writer.write(frame);
      port.send(frame, meta);
    },
    onReceive(handler: FrameHandler | undefined): void {
      port.onReceive(handler);
    },
    close(): void {
      port.close();
    },
  };
}

/** Build the segment; rejects with one sentence when a device option, the TAP or the tunnel cannot be had. */
export async function openSegment(options: SegmentOptions): Promise<Segment> {
  const sw = new L2Switch({ name: options.switchName });
  const writer = options.pcap === undefined ? undefined : new PcapWriter(options.pcap);
  const switchPort = (name: string): NetPort => {
    const port = sw.createPort(name);
    return writer === undefined ? port : recordingSent(port, writer);
  };
  const opened: NetPort[] = [];
  const uplinks: NetPort[] = [];
  const close = (): void => {
    for (const port of [...uplinks, ...opened]) port.close();
    writer?.close();
  };
  try {
    const devices = Array.from({ length: options.devices }, (_, i) => {
      const port = switchPort(`vm${i}`);
      opened.push(port);
      return new NetDevice({
        port,
        mac: options.mac === undefined ? undefined : nthMac(options.mac, i),
        queuePairs: options.queuePairs,
      });
    });
    if (options.tap !== undefined) uplinks.push(TapPort.open({ name: options.tap }));
    if (options.tunnel !== undefined) {
      uplinks.push(await UdpTunnel.open({ local: options.tunnel.local, peer: options.tunnel.peer, name: `${options.switchName}.tunnel` }));
    }
    for (const uplink of uplinks) {
      const port = switchPort(uplink.name);
      opened.push(port);
      patch(uplink, port);
    }
    return { switch: sw, devices, uplinks, close };
  } catch (err) {
    close();
    throw err;
  }
}
