/**
 * The memory balloon's registry entry (§5.5): inflate and deflate queues, statistics and free
 * page reporting queues, a 16-byte configuration space.
 */
import { join } from 'node:path';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import type { DeviceType } from '../device-type.ts';
import { integerIn, oneOf, read } from '../host-options.ts';
import { BALLOON_CONFIG, BALLOON_FEATURE_NAMES } from './wire.ts';

export const balloonType: DeviceType = {
  name: 'balloon',
  title: 'virtio-balloon memory balloon (§5.5)',
  deviceId: DeviceId.BALLOON,
  featureNames: BALLOON_FEATURE_NAMES,
  config: BALLOON_CONFIG,
  queues: [
    { name: 'inflateq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'deflateq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'statsq', count: '1 with STATS_VQ', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'reporting_vq', count: '1 with PAGE_REPORTING', maxSize: FRONT_END_MAX_QUEUE_SIZE },
  ],
  vhostUser: { type: 'balloon' },
  host: {
    summary: 'a virtio-balloon that releases the memory the guest gives back',
    help:
      'QEMU: -device vhost-user-test-device-pci,chardev=CHR,virtio-id=5,num_vqs=4,config_size=16 ' +
      '(guest RAM must be a shared memfd: -object memory-backend-memfd,share=on).',
    options: [
      {
        flags: '--stats-interval <seconds>',
        description: 'ask the guest for memory statistics this often (0: never)',
        parse: integerIn('--stats-interval', 0, 86400),
        defaultValue: 0,
      },
      {
        // As QEMU's virtio-balloon free-page-reporting=on|off.
        flags: '--free-page-reporting <on|off>',
        description: 'offer free page reporting: memory the guest frees is released on the host without a target change',
        parse: oneOf('--free-page-reporting', ['on', 'off']),
        defaultValue: 'on',
      },
      { flags: '--control <path>', description: 'a Unix socket for `paravirt balloon --control PATH set|status|stats`' },
    ],
    async create(values) {
      const { BalloonDevice } = await import('./device.ts');
      const device = new BalloonDevice({
        maxQueueSize: FRONT_END_MAX_QUEUE_SIZE,
        statsIntervalMs: (read.number(values, 'statsInterval') ?? 0) * 1000,
        reporting: read.string(values, 'freePageReporting') !== 'off',
      });
      const controlPath = read.string(values, 'control');
      const { listenControl } = await import('./control.ts');
      const control = controlPath === undefined ? undefined : await listenControl(device, controlPath);
      return { devices: [device], close: async () => control?.close() };
    },
  },
  qemu: {
    async options(vm) {
      return { control: join(vm.dir, 'balloon.ctl') };
    },
    vhostUser: ({ id, chardev }) => ['-device', `vhost-user-test-device-pci,id=${id},chardev=${chardev},virtio-id=5,num_vqs=4,config_size=16`],
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).BALLOON_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).BALLOON_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { BalloonDriver } = await import('./driver.ts');
      return BalloonDriver.open(transport, { log });
    },
  },
};
