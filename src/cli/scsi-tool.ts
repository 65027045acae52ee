/**
 * `paravirt scsi --socket-path S <info|read|write>`: the virtio-scsi driver and initiator, run over
 * the vhost-user front-end against a vhost-user-scsi back-end (`paravirt serve scsi`, SPDK), as a
 * disk tool over its LUNs:
 *
 *   info                                         every LUN: address, capacity, vendor, product
 *   read  [--lun T:L] --sector N [--count C]     hex dump of C sectors from sector N
 *   write [--lun T:L] --sector N --fill B [--count C]
 *
 * and, with --control-socket (the one `paravirt serve scsi --control-socket` listens on), the
 * running back-end's LUNs while a guest uses them:
 *
 *   attach FILE[,ro][,serial=S] --lun T:L      hot-plug a LUN
 *   detach --lun T:L                           hot-unplug it
 *   resize --lun T:L                           announce that its image file changed size
 *   luns                                       list the LUNs
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import type { ScsiInitiator, ScsiLun } from '../devices/scsi/initiator.ts';
import { SCSI_FEATURE_NAMES } from '../devices/scsi/descriptor.ts';
import { DeviceId } from '../virtio/constants.ts';
import { describeFeatures } from '../virtio/features.ts';
import { hexDump } from './blk-tool.ts';
import { OptionError } from '../devices/host-options.ts';
import { integerIn, logLevel, type LogLevel } from './options.ts';

const SECTOR_SIZE = 512;

interface ConnectionOptions {
  socketPath?: string;
  queueSize: number;
  logLevel: LogLevel;
  lun: string;
}

/** "T:L" or "L" (target 0). */
function lunAddress(value: string): string {
  const m = /^(?:(\d{1,3}):)?(\d{1,5})$/.exec(value);
  if (m === null || Number(m[1] ?? 0) > 255 || Number(m[2]) > 16383) throw new OptionError(`--lun must be TARGET:LUN or LUN (target 0 to 255, LUN 0 to 16383), not "${value}".`);
  return `${Number(m[1] ?? 0)}:${Number(m[2])}`;
}

async function withController(options: ConnectionOptions, cmd: Command, body: (init: ScsiInitiator) => Promise<void>): Promise<void> {
  if (options.socketPath === undefined) cmd.error('error: --socket-path <path> is required.', { exitCode: 1 });
  const { pino } = await import('pino');
  const { VhostUserFrontend } = await import('../transports/vhost-user/frontend.ts');
  const { ScsiInitiator } = await import('../devices/scsi/initiator.ts');
  const log = pino({ name: 'paravirt', level: options.logLevel }, process.stderr);
  const frontend = await VhostUserFrontend.connect(options.socketPath, { deviceId: DeviceId.SCSI, queueSize: options.queueSize, log });
  let init: ScsiInitiator;
  try {
    init = await ScsiInitiator.open(frontend, { log, queueSize: options.queueSize });
  } catch (err) {
    await frontend.close();
    throw err;
  }
  try {
    await body(init);
  } finally {
    await init.close();
  }
}

function pick(init: ScsiInitiator, options: ConnectionOptions, cmd: Command, sector: number, count: number): ScsiLun {
  const lun = init.luns.get(options.lun) ?? cmd.error(`error: --lun ${options.lun}: no such LUN (found ${init.list().map((l) => `${l.address.target}:${l.address.lun}`).join(', ') || 'none'}).`, { exitCode: 1 });
  if (sector + count > lun.capacity) cmd.error(`error: sectors ${sector} to ${sector + count - 1} reach past the end of LUN ${options.lun} (${lun.capacity} sectors).`, { exitCode: 1 });
  return lun;
}

/** One request to the control socket; prints the answer, or fails with its error sentence. */
async function control(cmd: Command, request: Record<string, unknown>): Promise<Record<string, unknown>> {
  const path = cmd.optsWithGlobals<{ controlSocket?: string }>().controlSocket;
  if (path === undefined) cmd.error('error: --control-socket <path> is required.', { exitCode: 1 });
  const { createConnection } = await import('node:net');
  const reply = await new Promise<string>((resolve, reject) => {
    const socket = createConnection(path, () => socket.write(`${JSON.stringify(request)}\n`));
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (text.includes('\n')) {
        socket.end();
        resolve(text.slice(0, text.indexOf('\n')));
      }
    });
    socket.on('error', (err) => reject(new Error(`--control-socket ${path}: ${err.message}`, { cause: err })));
  });
  const answer = JSON.parse(reply) as Record<string, unknown>;
  if (answer.ok !== true) cmd.error(`error: ${String(answer.error)}`, { exitCode: 1 });
  return answer;
}

function addressOf(lun: string): { target: number; number: number } {
  const [target, number] = lun.split(':').map(Number);
  return { target, number };
}

export function addScsiCommand(program: Command): void {
  const scsi = program
    .command('scsi')
    .description('use a vhost-user-scsi back-end through the virtio-scsi driver and a SCSI initiator')
    .option('--socket-path <path>', "the back-end's vhost-user Unix socket")
    .addOption(new Option('--lun <target:lun>', 'the LUN read and write use').argParser(lunAddress).default('0:0'))
    .option('--control-socket <path>', 'the control socket of a running paravirt serve scsi (attach, detach, resize, luns)')
    .addOption(new Option('--queue-size <n>', 'ring size to use').argParser(integerIn('--queue-size', 2, 32768)).default(128))
    .addOption(new Option('--log-level <level>', 'least severe level of the JSON log lines written to stderr').argParser(logLevel).default('warn'));

  scsi
    .command('info')
    .description('negotiated features and every LUN found')
    .action(async (_options: object, cmd: Command) => {
      await withController(cmd.optsWithGlobals<ConnectionOptions>(), cmd, async (init) => {
        const lines = [`features    ${describeFeatures(init.driver.features, SCSI_FEATURE_NAMES)}`, `queues      ${init.driver.requestQueues} request queues`];
        for (const l of init.list()) {
          lines.push(`LUN ${`${l.address.target}:${l.address.lun}`.padEnd(7)} ${l.capacity} sectors (${(l.capacity / 2048).toFixed(1)} MiB)${l.readOnly ? ', read-only' : ''}, ${l.identity.vendor} ${l.identity.product}`);
        }
        process.stdout.write(`${lines.join('\n')}\n`);
      });
    });

  scsi
    .command('read')
    .description('print sectors of a LUN as a hex dump')
    .requiredOption('--sector <n>', 'first sector', integerIn('--sector', 0, Number.MAX_SAFE_INTEGER))
    .addOption(new Option('--count <n>', 'sectors to read').argParser(integerIn('--count', 1, 2048)).default(1))
    .action(async (_options: object, cmd: Command) => {
      const options = cmd.optsWithGlobals<ConnectionOptions & { sector: number; count: number }>();
      await withController(options, cmd, async (init) => {
        const lun = pick(init, options, cmd, options.sector, options.count);
        process.stdout.write(`${hexDump(await lun.read(options.sector, options.count * SECTOR_SIZE), options.sector * SECTOR_SIZE)}\n`);
      });
    });

  scsi
    .command('write')
    .description('fill sectors of a LUN with one byte value')
    .requiredOption('--sector <n>', 'first sector', integerIn('--sector', 0, Number.MAX_SAFE_INTEGER))
    .requiredOption('--fill <byte>', 'fill with this byte value', integerIn('--fill', 0, 255))
    .addOption(new Option('--count <n>', 'sectors to fill').argParser(integerIn('--count', 1, 2048)).default(1))
    .action(async (_options: object, cmd: Command) => {
      const options = cmd.optsWithGlobals<ConnectionOptions & { sector: number; count: number; fill: number }>();
      await withController(options, cmd, async (init) => {
        const lun = pick(init, options, cmd, options.sector, options.count);
        await lun.write(options.sector, new Uint8Array(options.count * SECTOR_SIZE).fill(options.fill));
        await lun.flush();
        process.stdout.write(`wrote ${options.count} sector${options.count === 1 ? '' : 's'} at sector ${options.sector} of LUN ${options.lun}\n`);
      });
    });

  scsi
    .command('attach <lun-spec>')
    .description('hot-plug FILE[,ro][,serial=S] at --lun T:L of the running back-end')
    .action(async (spec: string, _options: object, cmd: Command) => {
      const { lun } = cmd.optsWithGlobals<{ lun: string }>();
      await control(cmd, { op: 'attach', lun: spec, ...addressOf(lun) });
      process.stdout.write(`attached LUN ${lun}\n`);
    });

  scsi
    .command('detach')
    .description('hot-unplug the LUN at --lun T:L of the running back-end')
    .action(async (_options: object, cmd: Command) => {
      const { lun } = cmd.optsWithGlobals<{ lun: string }>();
      await control(cmd, { op: 'detach', ...addressOf(lun) });
      process.stdout.write(`detached LUN ${lun}\n`);
    });

  scsi
    .command('resize')
    .description("announce that the image of --lun T:L changed size (the guest sees the new capacity)")
    .action(async (_options: object, cmd: Command) => {
      const { lun } = cmd.optsWithGlobals<{ lun: string }>();
      const answer = await control(cmd, { op: 'resize', ...addressOf(lun) });
      process.stdout.write(`LUN ${lun} is now ${String(answer.sectors)} sectors\n`);
    });

  scsi
    .command('luns')
    .description('list the LUNs of the running back-end')
    .action(async (_options: object, cmd: Command) => {
      const answer = await control(cmd, { op: 'list' });
      const luns = answer.luns as { target: number; number: number; sectors: number; readOnly: boolean; serial: string }[];
      process.stdout.write(luns.map((l) => `${l.target}:${l.number} ${l.sectors} sectors${l.readOnly ? ', read-only' : ''}, serial ${l.serial}\n`).join(''));
    });
}
