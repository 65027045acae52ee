/**
 * `paravirt serve <device>`: run one device as a vhost-user back-end until SIGINT or SIGTERM.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { pino, type Logger } from 'pino';
import { FileBackend } from '../devices/blk/file-backend.ts';
import { RngDevice } from '../devices/rng/device.ts';
import type { VirtioDevice } from '../virtio/device.ts';
import { BackendServer, type Listen } from '../transports/vhost-user/backend-server.ts';
import { VHOST_USER_BLK_QUEUE_SIZE, vhostUserBlkDevice } from './devices.ts';
import { integerIn, logLevel, type LogLevel } from './options.ts';

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

/** The capabilities JSON of vhost-user.json's VHostUserBackendCapabilities. */
type Capabilities = { type: 'block'; features: string[] } | { type: 'rng' };

function withCommonOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--socket-path <path>', 'listen for the front-end on this Unix socket').conflicts('fd'))
    .addOption(
      new Option('--fd <n>', 'serve the listening Unix socket inherited as this descriptor')
        .argParser(integerIn('--fd', 0, 0x7fff_ffff))
        .conflicts('socketPath'),
    )
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

/** Serve `device` until a termination signal, then shut down cleanly. */
async function run(device: VirtioDevice, target: Listen, log: Logger): Promise<void> {
  const server = BackendServer.listen(device, target, log);
  log.info({ device: device.name, ...target }, 'vhost-user back-end listening');
  const stop = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'shutting down');
    void server.close();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const failure = await server.closed;
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
        await run(device, target, log);
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
      await run(new RngDevice(), listenTarget(options, cmd), logger(options.logLevel));
    });
}
