/**
 * The network device's registry entry (§5.1): `paravirt serve net` is one Ethernet segment, a
 * learning switch with one virtio-net device per vhost-user socket (see segment.ts).
 */
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE, featureBit } from '../../virtio/constants.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import type { DeviceType, LocalModel } from '../device-type.ts';
import { endpoint, integerIn, isEndpoint, macAddress, read } from '../host-options.ts';
import { NET_CONFIG, NET_FEATURE_NAMES, NET_FEATURE_REQUIREMENTS, NET_OFFLOAD_FEATURES, NetFeature } from './wire.ts';

const isMac = (v: unknown): v is Uint8Array => v instanceof Uint8Array;

/**
 * A vhost-user-net back-end (DPDK's net_vhost, Open vSwitch, snabb) moves packets and nothing
 * else: no configuration space, no control queue, which QEMU's virtio-net provides itself. What
 * such a back-end decides: ring layout and notification features, the checksum and segmentation
 * offloads (it fills and reads virtio_net_hdr) and mergeable receive buffers (it fills
 * num_buffers). CTRL_GUEST_OFFLOADS is a control-queue command, so it stays out; so does MQ,
 * which needs the control queue (§5.1.3.1): one queue pair.
 */
export const NET_LOCAL_MODEL: LocalModel = {
  features: FRAMEWORK_FEATURES | (NET_OFFLOAD_FEATURES & ~featureBit(NetFeature.CTRL_GUEST_OFFLOADS)) | featureBit(NetFeature.MRG_RXBUF),
  queues: 2,
};

export const netType: DeviceType = {
  name: 'net',
  title: 'virtio-net network device (§5.1)',
  deviceId: DeviceId.NET,
  featureNames: NET_FEATURE_NAMES,
  featureRequirements: NET_FEATURE_REQUIREMENTS,
  config: NET_CONFIG,
  queues: [
    { name: 'receiveq', count: 'one per pair (--queues)', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'transmitq', count: 'one per pair (--queues)', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'controlq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
  ],
  vhostUser: { type: 'net' },
  localModel: NET_LOCAL_MODEL,
  host: {
    summary: 'virtio-net ports of one Ethernet switch, one per vhost-user socket',
    manySockets: true,
    help: `
Every --socket-path (or --fd) is one virtio-net device, all plugged into one learning switch:
give each virtual machine its own socket, and they share a segment. --tap and --tunnel plug a
host TAP interface or a UDP tunnel to another switch into the same segment. For example, two
QEMUs on one switch:

  paravirt serve net --switch lan0 --socket-path /run/vm1.sock --socket-path /run/vm2.sock
  qemu-system-x86_64 ... -object memory-backend-memfd,id=ram,size=1G,share=on -machine memory-backend=ram \\
    -chardev socket,id=c0,path=/run/vm1.sock -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0

With --queues N, give QEMU -netdev vhost-user,...,queues=N and -device virtio-net-pci,...,mq=on.`,
    options: [
      { flags: '--switch <name>', description: 'name of the switch the sockets share (in logs)', defaultValue: 'sw0' },
      { flags: '--tap <ifname>', description: 'also plug in this host TAP interface (created if missing; needs CAP_NET_ADMIN)' },
      { flags: '--tunnel <host:port>', description: 'also plug in a UDP tunnel to the switch of another paravirt at host:port', parse: endpoint('--tunnel') },
      { flags: '--tunnel-local <host:port>', description: "the tunnel's own address (default 0.0.0.0 and the peer's port)", parse: endpoint('--tunnel-local') },
      { flags: '--mac <address>', description: "the first device's MAC address, the next ones count up from it (default: the driver's choice)", parse: macAddress },
      { flags: '--queues <n>', description: 'queue pairs of each device', parse: integerIn('--queues', 1, 256), defaultValue: 1 },
      { flags: '--pcap <file>', description: 'record every frame entering the switch to this pcap file' },
    ],
    async create(values, env) {
      const tunnel = read.value(values, 'tunnel', isEndpoint);
      const tunnelLocal = read.value(values, 'tunnelLocal', isEndpoint);
      if (tunnelLocal !== undefined && tunnel === undefined) throw new Error('--tunnel-local needs --tunnel <host:port>.');
      const { openSegment } = await import('./segment.ts');
      const segment = await openSegment({
        switchName: read.string(values, 'switch') ?? 'sw0',
        devices: env.sockets,
        queuePairs: read.number(values, 'queues') ?? 1,
        mac: read.value(values, 'mac', isMac),
        tap: read.string(values, 'tap'),
        tunnel: tunnel === undefined ? undefined : { peer: tunnel, local: tunnelLocal ?? { address: '0.0.0.0', port: tunnel.port } },
        pcap: read.string(values, 'pcap'),
      });
      return {
        devices: segment.devices,
        close: async () => segment.close(),
      };
    },
  },
  qemu: {
    async options(vm) {
      return { tap: vm.tap };
    },
    reconnect: true,
    vhostUser: ({ id, chardev, values }) => {
      const pairs = read.number(values, 'queues') ?? 1;
      return [
        '-netdev', `vhost-user,id=${id},chardev=${chardev},queues=${pairs}`,
        // One vector per queue, one for the control queue, one for configuration changes.
        '-device', `virtio-net-pci,id=${id},netdev=${id}${pairs > 1 ? `,mq=on,vectors=${2 * pairs + 2}` : ''}`,
      ];
    },
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).NET_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).NET_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { NetDriver } = await import('./driver.ts');
      return NetDriver.open(transport, { log });
    },
  },
};
