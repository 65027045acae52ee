/** The block device's registry entry (§5.2): a disk served from a raw image file. */
import { join } from 'node:path';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import { scratchImage } from '../../storage/scratch-image.ts';
import type { DeviceType } from '../device-type.ts';
import { integerIn, read } from '../host-options.ts';
import { BLK_CONFIG, BLK_FEATURE_NAMES } from './wire.ts';

/** The disk a VM gets when it was given none. */
const SCRATCH_DISK_BYTES = 256 * 1024 * 1024;

export const blkType: DeviceType = {
  name: 'blk',
  title: 'virtio-blk block device (§5.2)',
  deviceId: DeviceId.BLOCK,
  featureNames: BLK_FEATURE_NAMES,
  config: BLK_CONFIG,
  queues: [{ name: 'requestq', count: 'one per --queues', maxSize: FRONT_END_MAX_QUEUE_SIZE }],
  vhostUser: { type: 'block', features: ['read-only', 'blk-file'] },
  host: {
    summary: 'a virtio-blk disk backed by a raw image file',
    options: [
      { flags: '--image <path>', description: 'raw disk image file to serve' },
      { flags: '--blk-file <path>', description: 'the same as --image (vhost-user-blk convention)' },
      { flags: '--read-only', description: 'refuse writes; the guest sees a read-only disk' },
      { flags: '--queues <n>', description: 'number of request queues', parse: integerIn('--queues', 1, 256), defaultValue: 1 },
      {
        flags: '--queue-size <n>',
        description: `largest ring size the front-end may pick (QEMU's queue-size; a power of two; default ${FRONT_END_MAX_QUEUE_SIZE})`,
        parse: integerIn('--queue-size', 4, 32768),
      },
    ],
    async create(values) {
      const image = read.string(values, 'image') ?? read.string(values, 'blkFile');
      if (image === undefined) throw new Error('--image <path> is required.');
      const readOnly = read.flag(values, 'readOnly');
      const { FileBackend } = await import('../../storage/file-backend.ts');
      const { vhostUserBlkDevice } = await import('./device.ts');
      const backend = await FileBackend.open(image, { readOnly });
      try {
        const device = vhostUserBlkDevice(backend, { readOnly, queues: read.number(values, 'queues'), queueSize: read.number(values, 'queueSize') });
        return { devices: [device], close: () => backend.close() };
      } catch (err) {
        await backend.close();
        throw err;
      }
    },
  },
  qemu: {
    async options(vm) {
      return { image: vm.disk ?? scratchImage(join(vm.dir, 'disk.img'), SCRATCH_DISK_BYTES, vm.makeFiles) };
    },
    vhostUser: ({ id, chardev, values }) => ['-device', `vhost-user-blk-pci,id=${id},chardev=${chardev},num-queues=${read.number(values, 'queues') ?? 1}`],
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).BLK_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).BLK_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { BlkDriver } = await import('./driver.ts');
      return BlkDriver.open(transport, { log });
    },
  },
};
