/**
 * The input device's registry entry (§5.8): a keyboard, mouse or tablet the host types into
 * through a control socket (control.ts).
 */
import { join } from 'node:path';
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import type { DeviceType } from '../device-type.ts';
import { oneOf, read } from '../host-options.ts';
import { INPUT_KINDS, type InputKind } from './profile.ts';
import { INPUT_CONFIG } from './wire.ts';

const isKind = (v: unknown): v is InputKind => INPUT_KINDS.some((k) => k === v);

export const inputType: DeviceType = {
  name: 'input',
  title: 'virtio-input keyboard, mouse or tablet (§5.8)',
  deviceId: DeviceId.INPUT,
  featureNames: {},
  config: INPUT_CONFIG,
  queues: [
    { name: 'eventq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'statusq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
  ],
  vhostUser: { type: 'input' },
  host: {
    summary: 'a virtio-input keyboard, mouse or tablet the host types into through a control socket',
    help: [
      '',
      'QEMU: -chardev socket,id=in0,path=S -device vhost-user-input-pci,chardev=in0',
      'Type into it: echo "type hello\\n" | socat - UNIX-CONNECT:CONTROL (commands: key, type, button, move, wheel, abs, leds).',
    ].join('\n'),
    options: [
      { flags: '--kind <kind>', description: `what the device is: ${INPUT_KINDS.join(', ')}`, parse: oneOf('--kind', INPUT_KINDS), defaultValue: 'keyboard' },
      { flags: '--name <text>', description: 'the name the guest sees (ID_NAME)' },
      { flags: '--serial <text>', description: 'the serial the guest sees (ID_SERIAL)', defaultValue: '' },
      { flags: '--control-socket <path>', description: 'Unix socket taking key, type, move, abs... commands, one per line' },
    ],
    async create(values, env) {
      const kind = read.value(values, 'kind', isKind) ?? 'keyboard';
      const { InputDevice } = await import('./device.ts');
      const { inputProfile } = await import('./profile.ts');
      const { listenInputControl } = await import('./control.ts');
      const profile = inputProfile(kind, read.string(values, 'name'), read.string(values, 'serial'));
      const device = new InputDevice(profile, {
        onStatus: (event) => env.log.info({ type: event.type, code: event.code, value: event.value }, 'input: status from the guest'),
      });
      const path = read.string(values, 'controlSocket');
      const control = path === undefined ? undefined : await listenInputControl(device, path);
      if (path !== undefined) env.log.info({ controlSocket: path }, 'input control socket listening');
      return {
        devices: [device],
        close: async () => control?.close(),
      };
    },
  },
  qemu: {
    async options(vm) {
      return { controlSocket: join(vm.dir, 'input.ctl') };
    },
    // A tablet (an absolute pointer): the dashboard's screen moves it to where the mouse is.
    async more(vm) {
      return [{ kind: 'tablet', controlSocket: join(vm.dir, 'tablet.ctl') }];
    },
    vhostUser: ({ id, chardev }) => ['-device', `vhost-user-input-pci,id=${id},chardev=${chardev}`],
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).INPUT_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).INPUT_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { InputDriver } = await import('./driver.ts');
      return InputDriver.open(transport, { log });
    },
  },
};
