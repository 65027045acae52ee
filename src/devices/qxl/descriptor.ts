/** The QXL display's registry entry: a PCI device that is not virtio, served whole over vfio-user. */
import type { PciDeviceType } from '../device-type.ts';
import { OptionError, integerIn, read } from '../host-options.ts';
import { CLASS_DISPLAY_OTHER, QXL_DEVICE_ID, QXL_VENDOR_ID } from './wire.ts';

const MIB = 2 ** 20;

/** A BAR size in MiB: a power of two from `min` to `max`. */
function barMib(name: string, min: number, max: number): (value: string) => number {
  const inRange = integerIn(name, min, max);
  return (value) => {
    const mib = inRange(value);
    if ((mib & (mib - 1)) !== 0) throw new OptionError(`${name} must be a power of two (MiB), not "${value}".`);
    return mib;
  };
}

export const qxlType: PciDeviceType = {
  name: 'qxl',
  title: 'QXL display (spice-protocol qxl_dev.h, as QEMU\'s qxl)',
  pci: { vendorId: QXL_VENDOR_ID, deviceId: QXL_DEVICE_ID, classCode: CLASS_DISPLAY_OTHER },
  host: {
    summary: 'a QXL display card (vfio-user only): Linux\'s qxl drives it, its screen is a PNG on demand',
    help: 'QEMU: -device \'{"driver":"vfio-user-pci","socket":{"path":"PATH","type":"unix"}}\' (QXL draws from its own BARs, never guest RAM). Screenshot: paravirt qxl --control CTL png OUT.png',
    options: [
      { flags: '--ram-size <MiB>', description: 'RAM BAR (commands, rings, surface 0 area): a power of two', parse: barMib('--ram-size', 4, 1024), defaultValue: 64 },
      { flags: '--vram-size <MiB>', description: 'VRAM BAR (surfaces): a power of two', parse: barMib('--vram-size', 4, 1024), defaultValue: 64 },
      { flags: '--width <pixels>', description: 'the monitor width offered to the guest', parse: integerIn('--width', 64, 8192), defaultValue: 1024 },
      { flags: '--height <pixels>', description: 'the monitor height offered to the guest', parse: integerIn('--height', 64, 8192), defaultValue: 768 },
      { flags: '--control <path>', description: 'a Unix socket for `paravirt qxl --control PATH png FILE|status`' },
    ],
    async create(values, env) {
      if (env.sockets !== 1) throw new Error('qxl serves one vfio-user client: give one --socket-path or --fd.');
      const ramSize = (read.number(values, 'ramSize') ?? 64) * MIB;
      const width = read.number(values, 'width') ?? 1024;
      const height = read.number(values, 'height') ?? 768;
      // The ROM gives a quarter of the RAM BAR to surface 0 (as QEMU's 16 of 64 MiB).
      if (width * height * 4 > ramSize / 4) throw new Error(`a ${width}x${height} display needs --ram-size of at least ${Math.ceil((width * height * 16) / MIB)} MiB (rounded up to a power of two).`);
      const { QxlDevice } = await import('./device.ts');
      const device = new QxlDevice({ ramSize, vramSize: (read.number(values, 'vramSize') ?? 64) * MIB, width, height, log: env.log });
      const controlPath = read.string(values, 'control');
      const { listenControl } = await import('./control.ts');
      const control = controlPath === undefined ? undefined : await listenControl(device, controlPath);
      return {
        endpoints: [device],
        close: async () => {
          await control?.close();
          device.close();
        },
      };
    },
  },
};
