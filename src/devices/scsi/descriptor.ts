/** The SCSI controller's registry entry (§5.6): disk LUNs served from raw image files. */
import { join } from 'node:path';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import { scratchImage } from '../../storage/scratch-image.ts';
import type { DeviceType } from '../device-type.ts';
import { OptionError, integerIn, read } from '../host-options.ts';
import { MAX_LUN, MAX_TARGET, SCSI_CONFIG, ScsiFeature } from './wire.ts';
import { bitNames } from '../../virtio/features.ts';

/** One --lun: an image file, read-only or not, its serial, and where it sits. */
export interface LunSpec {
  readonly path: string;
  readonly readOnly: boolean;
  readonly serial?: string;
  readonly target?: number;
  readonly lun?: number;
}

function isLunSpec(v: unknown): v is LunSpec {
  return typeof v === 'object' && v !== null && 'path' in v && 'readOnly' in v;
}

function bounded(what: string, value: string, max: number, spec: string): number {
  const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(n) || n > max) throw new OptionError(`--lun ${what} must be an integer from 0 to ${max}, not "${value}" in "${spec}".`);
  return n;
}

/** Parse `FILE[,ro][,serial=S][,target=T][,lun=L]`. */
export function parseLunSpec(spec: string): LunSpec {
  const [path, ...opts] = spec.split(',');
  if (path === '') throw new OptionError(`--lun needs an image file before its options, not "${spec}".`);
  let readOnly = false;
  let serial: string | undefined;
  let target: number | undefined;
  let lun: number | undefined;
  for (const opt of opts) {
    const eq = opt.indexOf('=');
    const name = eq < 0 ? opt : opt.slice(0, eq);
    const value = opt.slice(eq + 1);
    if (opt === 'ro') readOnly = true;
    else if (name === 'serial' && eq > 0) serial = value;
    else if (name === 'target' && eq > 0) target = bounded('target', value, MAX_TARGET, spec);
    else if (name === 'lun' && eq > 0) lun = bounded('lun', value, MAX_LUN, spec);
    else throw new OptionError(`--lun option "${opt}" is not ro, serial=, target= or lun= in "${spec}".`);
  }
  return { path, readOnly, serial, target, lun };
}

export const SCSI_FEATURE_NAMES: Readonly<Record<number, string>> = bitNames(ScsiFeature);

/** The LUN a VM's controller gets to show hot-plug and resize on. */
const SCRATCH_LUN_BYTES = 64 * 1024 * 1024;

export const scsiType: DeviceType = {
  name: 'scsi',
  title: 'virtio-scsi controller (§5.6)',
  deviceId: DeviceId.SCSI,
  featureNames: SCSI_FEATURE_NAMES,
  config: SCSI_CONFIG,
  queues: [
    { name: 'controlq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'eventq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'requestq', count: 'one per --queues', maxSize: FRONT_END_MAX_QUEUE_SIZE },
  ],
  vhostUser: { type: 'scsi' },
  host: {
    summary: 'a virtio-scsi controller with disk LUNs backed by raw image files',
    help:
      'LUNs are numbered in the order given, on target 0, unless a --lun says target= and lun=.\n' +
      'Example: paravirt serve scsi --socket-path /tmp/scsi.sock --lun a.img --lun b.img,ro,serial=B\n' +
      'QEMU: -chardev socket,id=c0,path=/tmp/scsi.sock -device vhost-user-scsi-pci,chardev=c0,num_queues=N (N at most --queues)',
    options: [
      {
        flags: '--lun <file[,ro][,serial=S][,target=T][,lun=L]>',
        description: 'a disk LUN on a raw image file (repeatable)',
        parse: parseLunSpec,
        repeatable: true,
      },
      { flags: '--queues <n>', description: 'number of request queues', parse: integerIn('--queues', 1, 256), defaultValue: 1 },
      {
        flags: '--queue-size <n>',
        description: `largest ring size the front-end may pick (a power of two; default ${FRONT_END_MAX_QUEUE_SIZE})`,
        parse: integerIn('--queue-size', 4, 32768),
      },
      { flags: '--control-socket <path>', description: 'Unix socket for hot-plug, hot-unplug and resize while running (paravirt scsi --control-socket)' },
    ],
    async create(values) {
      const specs = read.list(values, 'lun', isLunSpec);
      if (specs.length === 0) throw new Error('--lun <file> is required (at least one LUN).');
      const { openLuns } = await import('./luns.ts');
      const { ScsiDevice } = await import('./device.ts');
      const luns = await openLuns(specs);
      try {
        const device = new ScsiDevice({ targets: luns.targets, queues: read.number(values, 'queues'), queueSize: read.number(values, 'queueSize') });
        const controlPath = read.string(values, 'controlSocket');
        const { ScsiControl } = await import('./control.ts');
        const control = controlPath === undefined ? new ScsiControl(device, luns.threads) : await ScsiControl.listen(device, luns.threads, controlPath);
        return {
          devices: [device],
          control: (request) => control.handle(request),
          close: async () => {
            await control.close();
            await luns.close();
          },
        };
      } catch (err) {
        await luns.close();
        throw err;
      }
    },
  },
  qemu: {
    async options(vm) {
      const image = scratchImage(join(vm.dir, 'lun0.img'), SCRATCH_LUN_BYTES, vm.makeFiles);
      return { lun: [parseLunSpec(image)], controlSocket: join(vm.dir, 'scsi.ctl') };
    },
    // hw/scsi/vhost-user-scsi.c builds the virtio-scsi configuration space from its properties.
    frontEndConfig: true,
    vhostUser: ({ id, chardev, values }) => ['-device', `vhost-user-scsi-pci,id=${id},chardev=${chardev},num_queues=${read.number(values, 'queues') ?? 1}`],
  },
  guest: {
    async open(transport, log) {
      const { ScsiDriver } = await import('./driver.ts');
      return ScsiDriver.open(transport, { log });
    },
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).SCSI_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).SCSI_DRIVER_FUZZ;
  },
};
