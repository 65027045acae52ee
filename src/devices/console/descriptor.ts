/** The console device's registry entry (§5.3): multiport, ports bridged to host sockets, files or stdio. */
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import type { DeviceType } from '../device-type.ts';
import { integerIn, read } from '../host-options.ts';
import { isEndpointSpec, isNamedEndpoint, parseEndpoint, parseNamedEndpoint } from './endpoints.ts';
import { CONSOLE_CONFIG, ConsoleFeature, MAX_PORTS_LIMIT } from './wire.ts';
import { bitNames } from '../../virtio/features.ts';

const DEFAULT_MAX_PORTS = 8;

export const consoleType: DeviceType = {
  name: 'console',
  title: 'virtio-console serial ports (§5.3)',
  deviceId: DeviceId.CONSOLE,
  featureNames: bitNames(ConsoleFeature),
  config: CONSOLE_CONFIG,
  queues: [
    { name: 'receiveq', count: 'one per port', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'transmitq', count: 'one per port', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'control receiveq', count: '1 (queue 2)', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'control transmitq', count: '1 (queue 3)', maxSize: FRONT_END_MAX_QUEUE_SIZE },
  ],
  vhostUser: { type: 'console' },
  host: {
    summary: 'virtio-console ports (a console and named ports) bridged to Unix sockets, files or stdio',
    help: [
      'QEMU: -device vhost-user-test-device-pci,chardev=C,virtio-id=3,num_vqs=2*MAXPORTS+2,config_size=12',
      '(num_vqs=18 for the default --max-ports 8). Port 0 is the console (hvc0 in a Linux guest);',
      'named ports are 1, 2, ... in the order given and appear as /dev/virtio-ports/NAME.',
    ].join('\n'),
    options: [
      { flags: '--console <endpoint>', description: 'host end of the console port 0: unix:PATH, pty or stdio', parse: (v: string) => parseEndpoint('--console', v, ['unix', 'pty', 'stdio']) },
      { flags: '--port <name=endpoint>', description: 'a named port and its host end: NAME=unix:PATH, NAME=pty or NAME=file:PATH (repeatable)', parse: parseNamedEndpoint, repeatable: true },
      {
        flags: '--max-ports <n>',
        description: 'max_nr_ports, port 0 included: room for ports added later; the front-end needs 2*n+2 queues',
        parse: integerIn('--max-ports', 1, MAX_PORTS_LIMIT),
      },
      { flags: '--cols <n>', description: 'console width offered with VIRTIO_CONSOLE_F_SIZE (with --rows)', parse: integerIn('--cols', 1, 0xffff) },
      { flags: '--rows <n>', description: 'console height offered with VIRTIO_CONSOLE_F_SIZE (with --cols)', parse: integerIn('--rows', 1, 0xffff) },
    ],
    async create(values, env) {
      const consoleEnd = read.value(values, 'console', isEndpointSpec);
      const named = read.list(values, 'port', isNamedEndpoint);
      const maxPorts = read.number(values, 'maxPorts') ?? Math.max(DEFAULT_MAX_PORTS, named.length + 1);
      if (named.length + 1 > maxPorts) throw new Error(`--max-ports ${maxPorts} leaves no room for ${named.length} named ports after the console.`);
      const cols = read.number(values, 'cols');
      const rows = read.number(values, 'rows');
      if ((cols === undefined) !== (rows === undefined)) throw new Error('--cols and --rows go together.');
      const names = new Set<string>();
      for (const { name } of named) {
        if (names.has(name)) throw new Error(`--port ${name} is given twice.`);
        names.add(name);
      }
      // A console on the back-end's own terminal takes its size and follows its resizes.
      const followTerminal = consoleEnd?.kind === 'stdio' && process.stdout.isTTY && cols === undefined;
      const size = cols !== undefined && rows !== undefined ? { cols, rows } : followTerminal ? { cols: process.stdout.columns, rows: process.stdout.rows } : undefined;
      const { ConsoleDevice } = await import('./device.ts');
      const { openEndpoint } = await import('./endpoints.ts');
      const device = new ConsoleDevice(
        [...(consoleEnd === undefined ? [] : [{ id: 0, console: true }]), ...named.map(({ name }, i) => ({ id: i + 1, name }))],
        { maxPorts, maxQueueSize: FRONT_END_MAX_QUEUE_SIZE, size },
      );
      const closers: (() => Promise<void>)[] = [];
      const close = async (): Promise<void> => {
        for (const c of closers.splice(0)) await c();
      };
      if (followTerminal) {
        const onResize = (): void => device.resize(process.stdout.columns, process.stdout.rows);
        process.stdout.on('resize', onResize);
        closers.push(async () => void process.stdout.off('resize', onResize));
      }
      try {
        if (consoleEnd !== undefined) closers.push(await openEndpoint(consoleEnd, device.port(0)!, env.log));
        for (const [i, { endpoint }] of named.entries()) closers.push(await openEndpoint(endpoint, device.port(i + 1)!, env.log));
      } catch (err) {
        await close();
        throw err;
      }
      return { devices: [device], close };
    },
  },
  qemu: {
    console: 'hvc0',
    async options() {
      return { maxPorts: DEFAULT_MAX_PORTS };
    },
    vhostUser: ({ id, chardev, values }) => [
      '-device',
      `vhost-user-test-device-pci,id=${id},chardev=${chardev},virtio-id=3,num_vqs=${2 * (read.number(values, 'maxPorts') ?? DEFAULT_MAX_PORTS) + 2},config_size=12`,
    ],
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).CONSOLE_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).CONSOLE_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { ConsoleDriver } = await import('./driver.ts');
      return ConsoleDriver.open(transport, { log });
    },
  },
};
