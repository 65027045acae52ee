/**
 * The GPU device's registry entry (§5.7): 2D mode, a control queue and a cursor queue, a 16-byte
 * configuration space, one or more scanouts rendered to RGBA and seen as PNG.
 */
import { join } from 'node:path';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import type { DeviceType } from '../device-type.ts';
import { integerIn, read } from '../host-options.ts';
import { GPU_CONFIG, GPU_FEATURE_NAMES, MAX_SCANOUTS } from './wire.ts';

/** Mirrors device.ts MIN_MODE_SIDE / MAX_MODE_SIDE, kept here so the descriptor loads nothing. */
const MIN_SIDE = 16;
const MAX_SIDE = 4095;

export const gpuType: DeviceType = {
  name: 'gpu',
  title: 'virtio-gpu 2D display (§5.7)',
  deviceId: DeviceId.GPU,
  featureNames: GPU_FEATURE_NAMES,
  config: GPU_CONFIG,
  queues: [
    { name: 'controlq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'cursorq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
  ],
  vhostUser: { type: 'gpu' },
  host: {
    summary: 'a virtio-gpu 2D display whose scanouts paravirt renders and shows as PNG',
    help:
      'QEMU: -device vfio-user-pci,socket=S with `--transport vfio-user` (paravirt shows the display), or ' +
      '-chardev socket,id=G,path=S -device vhost-user-gpu-pci,chardev=G,xres=W,yres=H (QEMU shows it; match --width/--height). ' +
      'Screenshots and display changes: `paravirt gpu --control PATH screenshot out.png | mode WxH | status`.',
    options: [
      { flags: '--width <pixels>', description: 'width of each display mode', parse: integerIn('--width', MIN_SIDE, MAX_SIDE), defaultValue: 1024 },
      { flags: '--height <pixels>', description: 'height of each display mode', parse: integerIn('--height', MIN_SIDE, MAX_SIDE), defaultValue: 768 },
      { flags: '--scanouts <n>', description: 'number of scanouts (displays)', parse: integerIn('--scanouts', 1, MAX_SCANOUTS), defaultValue: 1 },
      {
        flags: '--max-resource-memory <MiB>',
        description: 'host memory the guest\'s resources may hold; more is refused with ERR_OUT_OF_MEMORY',
        parse: integerIn('--max-resource-memory', 1, 65536),
        defaultValue: 256,
      },
      { flags: '--control <path>', description: 'a Unix socket for `paravirt gpu --control PATH screenshot|mode|status`' },
    ],
    async create(values, env) {
      const { GpuDevice } = await import('./device.ts');
      const mode = { width: read.number(values, 'width') ?? 1024, height: read.number(values, 'height') ?? 768 };
      const device = new GpuDevice({
        maxQueueSize: FRONT_END_MAX_QUEUE_SIZE,
        scanouts: Array.from({ length: read.number(values, 'scanouts') ?? 1 }, () => mode),
        maxResourceMemory: (read.number(values, 'maxResourceMemory') ?? 256) * 1024 * 1024,
        log: env.log,
      });
      const controlPath = read.string(values, 'control');
      const { listenGpuControl } = await import('./control.ts');
      const control = controlPath === undefined ? undefined : await listenGpuControl(device, controlPath);
      return {
        devices: [device],
        close: async () => {
          device.close();
          await control?.close();
        },
      };
    },
  },
  qemu: {
    async options(vm) {
      return { control: join(vm.dir, 'gpu.ctl') };
    },
    // No vhostUser: over vfio-user the whole function is paravirt's and so is its display, which
    // the dashboard shows; behind QEMU's vhost-user-gpu-pci, QEMU would show it instead.
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).GPU_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).GPU_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { GpuDriver } = await import('./driver.ts');
      return GpuDriver.open(transport, { log });
    },
  },
};
