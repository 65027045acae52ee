/**
 * `paravirt blk --socket-path S <info|read|write|bench>`: the virtio-blk driver, run over the
 * vhost-user front-end against any vhost-user-blk back-end (qemu-storage-daemon, SPDK, DPDK,
 * `paravirt serve blk`), as a disk tool:
 *
 *   info                                   capacity, negotiated features by name, limits
 *   read  --sector N [--count C]           hex dump of C sectors from sector N
 *   write --sector N (--file F | --fill B [--count C])
 *   bench [--seconds S] [--depth D] [--block-size B] [--write]   random I/O with a progress line
 *
 * `--poll-us` is the driver's poll budget, as `paravirt serve --poll-us` is the back-end's.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { Option } from 'commander';
import type { BlkDriver } from '../devices/blk/driver.ts';
import { BLK_CONFIG, BLK_FEATURE_NAMES, SECTOR_SIZE } from '../devices/blk/wire.ts';
import { DEFAULT_POLL_MICROS } from '../devices/host-options.ts';
import { ProtocolFeature } from '../transports/vhost-user/constants.ts';
import type { VhostUserFrontend } from '../transports/vhost-user/frontend.ts';
import { DeviceId } from '../virtio/constants.ts';
import { bitNames, describeFeatures } from '../virtio/features.ts';
import { randomIo } from './blk-workload.ts';
import { integerIn, logLevel, type LogLevel } from './options.ts';

interface ConnectionOptions {
  socketPath?: string;
  queueSize: number;
  pollUs: number;
  logLevel: LogLevel;
}

const PROTOCOL_FEATURE_NAMES: Readonly<Record<number, string>> = bitNames(ProtocolFeature);

/**
 * Open the disk behind the socket, run `body`, and always close it. The driver, the front-end
 * and the logger are imported here, when a subcommand runs, not when `paravirt` starts.
 */
async function withDisk(options: ConnectionOptions, cmd: Command, body: (blk: BlkDriver, frontend: VhostUserFrontend) => Promise<void>): Promise<void> {
  if (options.socketPath === undefined) cmd.error('error: --socket-path <path> is required.', { exitCode: 1 });
  const { pino } = await import('pino');
  const { VhostUserFrontend } = await import('../transports/vhost-user/frontend.ts');
  const { BlkDriver } = await import('../devices/blk/driver.ts');
  const log = pino({ name: 'paravirt', level: options.logLevel }, process.stderr);
  const frontend = await VhostUserFrontend.connect(options.socketPath, { deviceId: DeviceId.BLOCK, queueSize: options.queueSize, log });
  let blk: BlkDriver;
  try {
    blk = await BlkDriver.open(frontend, { log, queueSize: options.queueSize, pollMicros: options.pollUs });
  } catch (err) {
    await frontend.close();
    throw err;
  }
  try {
    await body(blk, frontend);
  } finally {
    await blk.close();
  }
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/** `xxd`-style lines: offset, 16 bytes in hex, the printable ones as text. */
export function hexDump(bytes: Uint8Array, firstOffset: number): string {
  const lines: string[] = [];
  for (let at = 0; at < bytes.length; at += 16) {
    const row = bytes.subarray(at, at + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const text = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${(firstOffset + at).toString(16).padStart(10, '0')}  ${hex.padEnd(47)}  ${text}`);
  }
  return lines.join('\n');
}

/** A sector range the disk holds, or a one-sentence error naming the option. */
function checkRange(blk: BlkDriver, sector: number, count: number, cmd: Command): void {
  if (sector + count > blk.capacity) {
    cmd.error(`error: sectors ${sector} to ${sector + count - 1} reach past the end of the disk (${blk.capacity} sectors).`, { exitCode: 1 });
  }
}

export function addBlkCommand(program: Command): void {
  const blk = program
    .command('blk')
    .description('use a vhost-user-blk back-end as a disk through the virtio-blk driver')
    .option('--socket-path <path>', "the back-end's vhost-user Unix socket")
    .addOption(
      new Option('--queue-size <n>', 'ring size to use (the back-end must accept it)').argParser(integerIn('--queue-size', 2, 32768)).default(128),
    )
    .addOption(
      new Option('--poll-us <microseconds>', "poll the used ring this long after a completion before sleeping on the back-end's notification (0: never poll)")
        .argParser(integerIn('--poll-us', 0, 1_000_000))
        .default(DEFAULT_POLL_MICROS),
    )
    .addOption(new Option('--log-level <level>', 'least severe level of the JSON log lines written to stderr').argParser(logLevel).default('warn'));

  blk
    .command('info')
    .description('capacity, negotiated features and limits')
    .action(async (_options: object, cmd: Command) => {
      const options = cmd.optsWithGlobals<ConnectionOptions>();
      await withDisk(options, cmd, async (disk, frontend) => {
        const id = await disk.getId().catch(() => undefined);
        const rows: [string, string][] = [
          ['socket', frontend.socketPath],
          ['capacity', `${disk.capacity} sectors (${mib(disk.capacity * SECTOR_SIZE)})`],
          ['read-only', disk.readOnly ? 'yes' : 'no'],
          ['queues', String(disk.queues)],
          ['features', describeFeatures(disk.features, BLK_FEATURE_NAMES)],
          ['protocol', describeFeatures(frontend.protocolFeatures, PROTOCOL_FEATURE_NAMES)],
          ['cache', disk.config.writeback ? 'writeback' : 'writethrough'],
        ];
        if (id !== undefined) rows.push(['serial', id === '' ? '(none)' : id]);
        const config = BLK_CONFIG.describe(BLK_CONFIG.encode(disk.config), disk.features, BLK_FEATURE_NAMES).map((line) => `  ${line}\n`);
        process.stdout.write(`${rows.map(([k, v]) => `${k.padEnd(11)} ${v}\n`).join('')}configuration:\n${config.join('')}`);
      });
    });

  blk
    .command('read')
    .description('print sectors as a hex dump')
    .requiredOption('--sector <n>', 'first sector', integerIn('--sector', 0, Number.MAX_SAFE_INTEGER))
    .addOption(new Option('--count <n>', 'sectors to read').argParser(integerIn('--count', 1, 2048)).default(1))
    .action(async (_options: object, cmd: Command) => {
      const options = cmd.optsWithGlobals<ConnectionOptions & { sector: number; count: number }>();
      await withDisk(options, cmd, async (disk) => {
        checkRange(disk, options.sector, options.count, cmd);
        const data = await disk.read(options.sector, options.count * SECTOR_SIZE);
        process.stdout.write(`${hexDump(data, options.sector * SECTOR_SIZE)}\n`);
      });
    });

  blk
    .command('write')
    .description('write a file, or sectors filled with one byte value')
    .requiredOption('--sector <n>', 'first sector', integerIn('--sector', 0, Number.MAX_SAFE_INTEGER))
    .addOption(new Option('--file <path>', 'data to write: a whole number of 512-byte sectors').conflicts('fill'))
    .addOption(new Option('--fill <byte>', 'fill with this byte value').argParser(integerIn('--fill', 0, 255)).conflicts('file'))
    .addOption(new Option('--count <n>', 'sectors to fill (with --fill)').argParser(integerIn('--count', 1, 2048)).default(1))
    .action(async (_options: object, cmd: Command) => {
      const options = cmd.optsWithGlobals<ConnectionOptions & { sector: number; count: number; file?: string; fill?: number }>();
      let data: Uint8Array;
      if (options.file !== undefined) {
        try {
          data = readFileSync(options.file);
        } catch (err) {
          cmd.error(`error: --file ${options.file} cannot be read: ${(err as Error).message}.`, { exitCode: 1 });
        }
        if (data.length === 0 || data.length % SECTOR_SIZE !== 0) {
          cmd.error(`error: --file ${options.file} is ${data.length} bytes, not a whole number of ${SECTOR_SIZE}-byte sectors.`, { exitCode: 1 });
        }
      } else if (options.fill !== undefined) {
        data = new Uint8Array(options.count * SECTOR_SIZE).fill(options.fill);
      } else {
        cmd.error('error: one of --file <path> or --fill <byte> is required.', { exitCode: 1 });
      }
      await withDisk(options, cmd, async (disk) => {
        checkRange(disk, options.sector, data.length / SECTOR_SIZE, cmd);
        await disk.write(options.sector, data);
        await disk.flush().catch(() => undefined);
        const sectors = data.length / SECTOR_SIZE;
        process.stdout.write(`wrote ${sectors} sector${sectors === 1 ? '' : 's'} at sector ${options.sector}\n`);
      });
    });

  blk
    .command('bench')
    .description('random reads (or writes) at a queue depth, with a progress line')
    .addOption(new Option('--seconds <n>', 'how long to run').argParser(integerIn('--seconds', 1, 3600)).default(5))
    .addOption(new Option('--depth <n>', 'requests in flight').argParser(integerIn('--depth', 1, 1024)).default(32))
    .addOption(new Option('--block-size <bytes>', 'bytes per request, a multiple of 512').argParser(integerIn('--block-size', 512, 1 << 20)).default(4096))
    .option('--write', 'random writes instead of reads (overwrites the disk)')
    .action(async (_options: object, cmd: Command) => {
      const options = cmd.optsWithGlobals<ConnectionOptions & { seconds: number; depth: number; blockSize: number; write?: boolean }>();
      if (options.blockSize % SECTOR_SIZE !== 0) cmd.error(`error: --block-size ${options.blockSize} is not a multiple of ${SECTOR_SIZE}.`, { exitCode: 1 });
      await withDisk(options, cmd, async (disk) => {
        const what = `${options.write === true ? 'random writes' : 'random reads'} of ${options.blockSize} bytes at depth ${options.depth}`;
        const result = await randomIo(disk, {
          ...options,
          onProgress: (ops, seconds) => process.stderr.write(`\r${what}: ${Math.round(ops / seconds)} IOPS after ${seconds.toFixed(0)} s `),
        });
        process.stderr.write('\n');
        process.stdout.write(`${what}: ${Math.round(result.iops)} IOPS, ${mib(result.throughput)}/s over ${result.seconds.toFixed(1)} s\n`);
      });
    });
}
