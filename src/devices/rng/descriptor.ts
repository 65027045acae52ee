/** The entropy device's registry entry (§5.4): one request queue, no configuration space. */
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import type { DeviceType } from '../device-type.ts';

export const rngType: DeviceType = {
  name: 'rng',
  title: 'virtio-rng entropy source (§5.4)',
  deviceId: DeviceId.RNG,
  featureNames: {},
  queues: [{ name: 'requestq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE }],
  vhostUser: { type: 'rng' },
  host: {
    summary: 'a virtio-rng entropy source',
    options: [],
    async create() {
      const { RngDevice } = await import('./device.ts');
      const device = new RngDevice();
      return { devices: [device], close: async () => {} };
    },
  },
  qemu: {
    async options() {
      return {};
    },
    vhostUser: ({ id, chardev }) => ['-device', `vhost-user-rng-pci,id=${id},chardev=${chardev}`],
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).RNG_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).RNG_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { RngDriver } = await import('./driver.ts');
      return RngDriver.open(transport, { log });
    },
  },
};
