/**
 * `paravirt serve <type>`: run a registered device type's host half as vhost-user back-ends (or,
 * with --transport vfio-user, as whole PCI devices to vfio-user clients) until SIGINT or SIGTERM. Every subcommand comes from the registry (src/devices/registry.ts): its
 * options, its help, its capabilities, and how its devices are built.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import type { Logger } from 'pino';
import type { DeviceType } from '../devices/device-type.ts';
import { DEVICE_TYPES } from '../devices/registry.ts';
import type { VirtioDevice } from '../virtio/device.ts';
import { deviceServer, type DeviceServer, type SocketTransport } from '../transports/device-server.ts';
import type { Listen } from '../transports/socket-server.ts';
import { commanderOption, integerIn, logLevel, type LogLevel } from './options.ts';

/** Options every back-end takes ("Backend program conventions"). */
type Transport = SocketTransport;

interface CommonOptions {
  transport: Transport;
  socketPath?: string | string[];
  fd?: number | number[];
  printCapabilities?: boolean;
  logLevel: LogLevel;
}

/** Collect every occurrence of a repeatable option, each parsed by `parse`. */
function repeatable<T>(parse: (value: string) => T): (value: string, previous: T[] | undefined) => T[] {
  return (value, previous) => [...(previous ?? []), parse(value)];
}

/** The conventions' options; with `many`, --socket-path and --fd may be repeated, one front-end on each. */
function withCommonOptions(cmd: Command, many: boolean): Command {
  const parseFd = integerIn('--fd', 0, 0x7fff_ffff);
  const each = many ? ' (repeat for more front-ends)' : '';
  const socketPath = new Option('--socket-path <path>', `listen for the front-end on this Unix socket${each}`).conflicts('fd');
  const fd = new Option('--fd <n>', `serve the listening Unix socket inherited as this descriptor${each}`).conflicts('socketPath');
  if (many) {
    socketPath.argParser(repeatable((v) => v));
    fd.argParser(repeatable(parseFd));
  } else {
    fd.argParser(parseFd);
  }
  return cmd
    .addOption(socketPath)
    .addOption(fd)
    .addOption(
      new Option('--transport <transport>', 'vhost-user: a back-end for a VMM\'s virtio device; vfio-user: the whole virtio-pci device')
        .choices(['vhost-user', 'vfio-user'])
        .default('vhost-user'),
    )
    .option('--print-capabilities', 'print the back-end capabilities as JSON and exit')
    .addOption(new Option('--log-level <level>', 'least severe level of the JSON log lines written to stdout').argParser(logLevel).default('info'));
}

/** Where to listen, one target per front-end, or a one-sentence error when none was given. */
function listenTargets(options: CommonOptions, cmd: Command): Listen[] {
  const paths = options.socketPath === undefined ? [] : [options.socketPath].flat();
  const fds = options.fd === undefined ? [] : [options.fd].flat();
  const targets: Listen[] = [...paths.map((socketPath) => ({ socketPath })), ...fds.map((fd) => ({ fd }))];
  if (targets.length === 0) cmd.error('error: one of --socket-path <path> or --fd <n> is required.', { exitCode: 1 });
  return targets;
}

/** The logger, imported when a back-end starts: `--print-capabilities` and `--help` do without. */
async function logger(level: LogLevel): Promise<Logger> {
  const { pino } = await import('pino');
  // JSON lines on stdout, where a service manager collects them (one-sentence errors go to stderr).
  return pino({ name: 'paravirt', level });
}

/**
 * Serve each device on its listening target until a termination signal, then shut down cleanly.
 * A server that stops by itself (its listener failed) stops the others too, and its error is
 * the command's.
 */
async function run(served: readonly { device: VirtioDevice; target: Listen }[], transport: Transport, log: Logger): Promise<void> {
  const listen = await deviceServer(transport);
  const servers: DeviceServer[] = [];
  const closeAll = (): Promise<unknown> => Promise.all(servers.map((s) => s.close()));
  try {
    for (const { device, target } of served) {
      const server = listen(device, target, served.length > 1 ? log.child({ socket: servers.length }) : log);
      servers.push(server);
      log.info({ device: device.name, ...target }, transport === 'vfio-user' ? 'vfio-user server listening' : 'vhost-user back-end listening');
    }
  } catch (err) {
    await closeAll();
    throw err;
  }
  const stop = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'shutting down');
    void closeAll();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const failure = await Promise.race(servers.map((s) => s.closed));
    await closeAll();
    if (failure !== undefined) throw failure;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/** `paravirt serve <type.name>`, built from the type's descriptor. */
function addServeType(serve: Command, type: DeviceType): void {
  const host = type.host;
  const many = host.manySockets === true;
  const cmd = withCommonOptions(serve.command(type.name).description(host.summary), many);
  for (const spec of host.options) cmd.addOption(commanderOption(spec));
  if (host.help !== undefined) cmd.addHelpText('after', host.help);
  cmd.action(async (options: CommonOptions & Record<string, unknown>, command: Command) => {
    if (options.printCapabilities === true) {
      process.stdout.write(`${JSON.stringify(type.vhostUser)}\n`);
      return;
    }
    const targets = listenTargets(options, command);
    const log = await logger(options.logLevel);
    const built = await host.create(options, { sockets: targets.length, log });
    try {
      await run(
        built.devices.map((device, i) => ({ device, target: targets[i] })),
        options.transport,
        log,
      );
    } finally {
      await built.close();
    }
  });
}

export function addServeCommand(program: Command): void {
  const serve = program.command('serve').description('serve a device to vhost-user front-ends (QEMU and others)');
  for (const type of DEVICE_TYPES) addServeType(serve, type);
}
