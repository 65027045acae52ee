/**
 * `paravirt serve <device>`: run devices as vhost-user back-ends until SIGINT or SIGTERM. blk
 * and rng serve one socket; net serves one socket per virtual machine, all on one switch.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { pino, type Logger } from 'pino';
import { FileBackend } from '../devices/blk/file-backend.ts';
import { RngDevice } from '../devices/rng/device.ts';
import type { VirtioDevice } from '../virtio/device.ts';
import { BackendServer, type Listen } from '../transports/vhost-user/backend-server.ts';
import { VHOST_USER_BLK_QUEUE_SIZE, vhostUserBlkDevice } from './devices.ts';
import { openSegment } from './net-segment.ts';
import { endpoint, integerIn, logLevel, type LogLevel, macAddress } from './options.ts';

/** Options every back-end takes ("Backend program conventions"). */
interface CommonOptions {
  socketPath?: string;
  fd?: number;
  printCapabilities?: boolean;
  logLevel: LogLevel;
}

interface BlkOptions extends CommonOptions {
  image?: string;
  readOnly?: boolean;
  queues: number;
  queueSize: number;
}

interface NetOptions extends Omit<CommonOptions, 'socketPath' | 'fd'> {
  socketPath?: string[];
  fd?: number[];
  switch: string;
  tap?: string;
  tunnel?: { address: string; port: number };
  tunnelLocal?: { address: string; port: number };
  mac?: Uint8Array;
  queues: number;
  pcap?: string;
}

/** The capabilities JSON of vhost-user.json's VHostUserBackendCapabilities. */
type Capabilities = { type: 'block'; features: string[] } | { type: 'rng' } | { type: 'net' };

/** Collect every occurrence of a repeatable option, each parsed by `parse`. */
function repeatable<T>(parse: (value: string) => T): (value: string, previous: T[] | undefined) => T[] {
  return (value, previous) => [...(previous ?? []), parse(value)];
}

/** The conventions' options; with `many`, --socket-path and --fd may be repeated, one front-end on each. */
function withCommonOptions(cmd: Command, many = false): Command {
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
    .option('--print-capabilities', 'print the back-end capabilities as JSON and exit')
    .addOption(new Option('--log-level <level>', 'least severe level of the JSON log lines written to stdout').argParser(logLevel).default('info'));
}

/** Where to listen, or a one-sentence error when neither or both were given. */
function listenTarget(options: CommonOptions, cmd: Command): Listen {
  if (options.socketPath !== undefined) return { socketPath: options.socketPath };
  if (options.fd !== undefined) return { fd: options.fd };
  cmd.error('error: one of --socket-path <path> or --fd <n> is required.', { exitCode: 1 });
}

function logger(level: LogLevel): Logger {
  // JSON lines on stdout, where a service manager collects them (one-sentence errors go to stderr).
  return pino({ name: 'paravirt', level });
}

/**
 * Serve each device on its listening target until a termination signal, then shut down cleanly.
 * A server that stops by itself (its listener failed) stops the others too, and its error is
 * the command's.
 */
async function run(served: readonly { device: VirtioDevice; target: Listen }[], log: Logger): Promise<void> {
  const servers: BackendServer[] = [];
  const closeAll = (): Promise<unknown> => Promise.all(servers.map((s) => s.close()));
  try {
    for (const { device, target } of served) {
      const server = BackendServer.listen(device, target, served.length > 1 ? log.child({ socket: servers.length }) : log);
      servers.push(server);
      log.info({ device: device.name, ...target }, 'vhost-user back-end listening');
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

function printCapabilities(caps: Capabilities): void {
  process.stdout.write(`${JSON.stringify(caps)}\n`);
}

export function addServeCommand(program: Command): void {
  const serve = program.command('serve').description('serve a device to vhost-user front-ends (QEMU and others)');

  withCommonOptions(serve.command('blk').description('a virtio-blk disk backed by a raw image file'))
    .option('--image <path>', 'raw disk image file to serve')
    .option('--blk-file <path>', 'the same as --image (vhost-user-blk convention)')
    .option('--read-only', 'refuse writes; the guest sees a read-only disk')
    .addOption(new Option('--queues <n>', 'number of request queues').argParser(integerIn('--queues', 1, 256)).default(1))
    .addOption(
      new Option('--queue-size <n>', "ring size the front-end uses (QEMU's queue-size; a power of two)")
        .argParser(integerIn('--queue-size', 4, 32768))
        .default(VHOST_USER_BLK_QUEUE_SIZE),
    )
    .action(async (options: BlkOptions & { blkFile?: string }, cmd: Command) => {
      if (options.printCapabilities === true) {
        printCapabilities({ type: 'block', features: ['read-only', 'blk-file'] });
        return;
      }
      const image = options.image ?? options.blkFile;
      if (image === undefined) cmd.error('error: --image <path> is required.', { exitCode: 1 });
      const target = listenTarget(options, cmd);
      const log = logger(options.logLevel);
      const backend = await FileBackend.open(image, { readOnly: options.readOnly === true });
      try {
        const device = vhostUserBlkDevice(backend, options);
        await run([{ device, target }], log);
      } finally {
        await backend.close();
      }
    });

  withCommonOptions(serve.command('rng').description('a virtio-rng entropy source'))
    .action(async (options: CommonOptions, cmd: Command) => {
      if (options.printCapabilities === true) {
        printCapabilities({ type: 'rng' });
        return;
      }
      await run([{ device: new RngDevice(), target: listenTarget(options, cmd) }], logger(options.logLevel));
    });

  withCommonOptions(serve.command('net'), true)
    .description('virtio-net ports of one Ethernet switch, one per vhost-user socket')
    .addHelpText(
      'after',
      `
Every --socket-path (or --fd) is one virtio-net device, all plugged into one learning switch:
give each virtual machine its own socket, and they share a segment. --tap and --tunnel plug a
host TAP interface or a UDP tunnel to another switch into the same segment. For example, two
QEMUs on one switch:

  paravirt serve net --switch lan0 --socket-path /run/vm1.sock --socket-path /run/vm2.sock
  qemu-system-x86_64 ... -object memory-backend-memfd,id=ram,size=1G,share=on -machine memory-backend=ram \\
    -chardev socket,id=c0,path=/run/vm1.sock -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0

With --queues N, give QEMU -netdev vhost-user,...,queues=N and -device virtio-net-pci,...,mq=on.`,
    )
    .addOption(new Option('--switch <name>', 'name of the switch the sockets share (in logs)').default('sw0'))
    .option('--tap <ifname>', 'also plug in this host TAP interface (created if missing; needs CAP_NET_ADMIN)')
    .addOption(new Option('--tunnel <host:port>', 'also plug in a UDP tunnel to the switch of another paravirt at host:port').argParser(endpoint('--tunnel')))
    .addOption(
      new Option('--tunnel-local <host:port>', "the tunnel's own address (default 0.0.0.0 and the peer's port)").argParser(endpoint('--tunnel-local')),
    )
    .addOption(new Option('--mac <address>', "the first device's MAC address, the next ones count up from it (default: the driver's choice)").argParser(macAddress))
    .addOption(new Option('--queues <n>', 'queue pairs of each device').argParser(integerIn('--queues', 1, 256)).default(1))
    .option('--pcap <file>', 'record every frame entering the switch to this pcap file')
    .action(async (options: NetOptions, cmd: Command) => {
      if (options.printCapabilities === true) {
        printCapabilities({ type: 'net' });
        return;
      }
      const targets: Listen[] = [...(options.socketPath ?? []).map((socketPath) => ({ socketPath })), ...(options.fd ?? []).map((fd) => ({ fd }))];
      if (targets.length === 0) cmd.error('error: one of --socket-path <path> or --fd <n> is required.', { exitCode: 1 });
      if (options.tunnelLocal !== undefined && options.tunnel === undefined) {
        cmd.error('error: --tunnel-local needs --tunnel <host:port>.', { exitCode: 1 });
      }
      const segment = await openSegment({
        switchName: options.switch,
        devices: targets.length,
        queuePairs: options.queues,
        mac: options.mac,
        tap: options.tap,
        tunnel:
          options.tunnel === undefined
            ? undefined
            : { peer: options.tunnel, local: options.tunnelLocal ?? { address: '0.0.0.0', port: options.tunnel.port } },
        pcap: options.pcap,
      });
      try {
        await run(
          segment.devices.map((device, i) => ({ device, target: targets[i] })),
          logger(options.logLevel),
        );
      } finally {
        segment.close();
      }
    });
}
