/**
 * The socket device's registry entry (§5.10): the guest's vsock bridged to Unix sockets on the
 * host, as Firecracker and cloud-hypervisor do it (hybrid.ts).
 */
import { join } from 'node:path';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import type { DeviceType } from '../device-type.ts';
import { integerIn, read } from '../host-options.ts';
import { MAX_GUEST_CID, MIN_GUEST_CID, VSOCK_CONFIG, VsockFeature } from './wire.ts';
import { bitNames } from '../../virtio/features.ts';

export const vsockType: DeviceType = {
  name: 'vsock',
  title: 'virtio-vsock host-guest sockets (§5.10)',
  deviceId: DeviceId.VSOCK,
  featureNames: bitNames(VsockFeature),
  config: VSOCK_CONFIG,
  queues: [
    { name: 'rx', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'tx', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'event', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
  ],
  vhostUser: { type: 'vsock' },
  host: {
    summary: "a virtio-vsock device whose host side is Unix sockets (guest port P is PATH_P; host programs send 'CONNECT P' to PATH, or to PATH.seqpacket for SOCK_SEQPACKET)",
    help: [
      '',
      'QEMU: -chardev socket,id=vs0,path=S -device vhost-user-vsock-pci,chardev=vs0',
      "Host to guest: connect to --uds-path, write 'CONNECT <port>\\n', read 'OK <local port>\\n', then the stream.",
      "SOCK_SEQPACKET: guest port P goes to the SOCK_SEQPACKET listener PATH_P; host programs connect a SOCK_SEQPACKET socket to PATH.seqpacket and send the message 'CONNECT <port>'. Messages up to 128 KiB.",
    ].join('\n'),
    options: [
      { flags: '--guest-cid <n>', description: "the guest's context ID", parse: integerIn('--guest-cid', MIN_GUEST_CID, MAX_GUEST_CID) },
      { flags: '--uds-path <path>', description: 'Unix socket for host-initiated connections (PATH.seqpacket for SOCK_SEQPACKET ones); guest connections to port P go to PATH_P' },
    ],
    async create(values, env) {
      const guestCid = read.number(values, 'guestCid');
      const udsPath = read.string(values, 'udsPath');
      if (guestCid === undefined) throw new Error('--guest-cid <n> is required.');
      if (udsPath === undefined) throw new Error('--uds-path <path> is required.');
      const { VsockDevice } = await import('./device.ts');
      const { listenHybrid, unixSocketHost } = await import('./hybrid.ts');
      const device = new VsockDevice({ guestCid, host: unixSocketHost(udsPath) });
      const server = await listenHybrid(device, udsPath, env.log);
      env.log.info({ udsPath }, 'vsock: host connections on the Unix socket');
      return { devices: [device], close: () => server.close() };
    },
  },
  qemu: {
    async options(vm) {
      // The first CID a guest may have (2 is the host).
      return { guestCid: MIN_GUEST_CID, udsPath: join(vm.dir, 'vsock.sock') };
    },
    vhostUser: ({ id, chardev }) => ['-device', `vhost-user-vsock-pci,id=${id},chardev=${chardev}`],
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).VSOCK_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).VSOCK_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { VsockDriver } = await import('./driver.ts');
      return VsockDriver.open(transport, { log });
    },
  },
};
