/**
 * `paravirt run`: a Linux VM under QEMU with every registered paravirt device attached, all
 * served by this one process (src/run/backend.ts), the guest's console on the terminal.
 *
 *   paravirt run [--disk IMAGE] [--memory 1G] [--tap IF] [--qemu Q --kernel K --initrd I] [--http HOST:PORT | --no-http]
 *   paravirt run --print-qemu-cmdline
 *
 * The same process serves the dashboard (src/dashboard/) on --http, 127.0.0.1:7080 by default:
 * the console, display, counters and controls of the VM in a browser. It authenticates nobody
 * and types into the guest, so it stays on the loopback interface unless told otherwise
 * (docs/security.md).
 *
 * The terminal is raw, as with `qemu -nographic`: keys go to the guest, except Ctrl-C, which
 * stops the VM (Ctrl-A c sends the guest a Ctrl-C). SIGINT and SIGTERM stop it too; a guest
 * that powers off ends the command.
 */
import { rmSync } from 'node:fs';
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { Logger } from 'pino';
import type { SharedConsole } from '../run/shared-console.ts';
import { TerminalKeys } from '../run/terminal-keys.ts';
import { POLL_OPTION } from '../devices/host-options.ts';
import { commanderOption, logLevel, integerIn, listenAddress, type ListenAddress, type LogLevel } from './options.ts';

interface RunOptions {
  qemu?: string;
  kernel?: string;
  initrd?: string;
  disk?: string;
  tap?: string;
  memory: number;
  cpus: number;
  append?: string;
  dir?: string;
  printQemuCmdline?: boolean;
  /** Where the dashboard listens; false with --no-http. */
  http: ListenAddress | false;
  logLevel: LogLevel;
  pollUs: number;
}

/** The dashboard's address unless --http says otherwise: this machine only, a port of its own. */
const DEFAULT_HTTP: ListenAddress = { host: '127.0.0.1', port: 7080 };

/** "512M", "2G": guest RAM in MiB, from 64 MiB to 1 TiB. */
function memorySize(text: string): number {
  const m = /^(\d+)([MG])$/i.exec(text.trim());
  const mib = m === null ? Number.NaN : Number(m[1]) * (m[2].toUpperCase() === 'G' ? 1024 : 1);
  if (!Number.isSafeInteger(mib) || mib < 64 || mib > 1024 * 1024) throw new InvalidArgumentError(`--memory must be a size from 64M to 1024G such as 512M or 2G, not "${text}".`);
  return mib;
}

async function logger(level: LogLevel): Promise<Logger> {
  const { pino } = await import('pino');
  // stdout is the guest's console: log lines go to stderr.
  return pino({ name: 'paravirt', level }, pino.destination(2));
}

async function run(options: RunOptions): Promise<void> {
  const { planVm, shellLine } = await import('../run/vm.ts');
  const vm = await planVm({
    qemu: options.qemu,
    kernel: options.kernel,
    initrd: options.initrd,
    disk: options.disk,
    tap: options.tap,
    memoryMiB: options.memory,
    cpus: options.cpus,
    append: options.append,
    dir: options.dir,
    printOnly: options.printQemuCmdline === true,
  });
  if (options.printQemuCmdline === true) {
    process.stdout.write(`${shellLine(vm.qemu)}\n`);
    return;
  }
  const removeDir = (): void => {
    if (vm.ownDir) rmSync(vm.dir, { recursive: true, force: true });
  };
  const log = await logger(options.logLevel);
  const { Backend } = await import('../run/backend.ts');
  let backend;
  try {
    backend = await Backend.start({ ...vm.backend, serving: { pollMicros: options.pollUs } }, log);
  } catch (err) {
    removeDir();
    throw err;
  }
  let dashboard;
  if (options.http !== false) {
    const { startDashboard } = await import('../dashboard/server.ts');
    try {
      dashboard = await startDashboard({ listen: options.http, backend, log }).catch((err: Error) => {
        // Another program (or VM) has the default port: any free one will do, the URL is printed.
        if (options.http !== DEFAULT_HTTP || (err.cause as NodeJS.ErrnoException | undefined)?.code !== 'EADDRINUSE') throw err;
        return startDashboard({ listen: { ...DEFAULT_HTTP, port: 0 }, backend, log });
      });
    } catch (err) {
      await backend.close();
      removeDir();
      throw err;
    }
  }
  const { QemuProcess } = await import('../run/qemu-process.ts');
  const qemu = new QemuProcess(vm.qemu, (text) => process.stderr.write(text));
  const stop = (): void => void qemu.stop();
  const detach = attachTerminal(backend.console, stop);
  process.stderr.write(
    `paravirt: a VM with ${backend.devices.map((d) => d.id).join(', ')} served by this process (pid ${process.pid}), QEMU pid ${qemu.pid}; ` +
      `files in ${vm.dir}; ${dashboard === undefined ? '' : `dashboard on ${dashboard.url}; `}${process.stdin.isTTY ? 'Ctrl-C' : 'SIGINT or SIGTERM'} stops it.\n`,
  );
  if (vm.left.length > 0) log.warn({ types: vm.left }, 'device types without a QEMU attachment are left out');
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const failure = backend.failed.then((err) => {
    log.error({ err: err.message }, 'a device socket failed; stopping the VM');
    stop();
    return err;
  });
  const exit = await qemu.exited;
  process.off('SIGINT', stop);
  process.off('SIGTERM', stop);
  detach();
  await dashboard?.close();
  await backend.close();
  removeDir();
  const socketFailure = await Promise.race([failure, Promise.resolve(undefined)]);
  if (socketFailure !== undefined) throw socketFailure;
  if (!exit.stopped && (exit.code !== 0 || exit.signal !== null)) {
    const how = exit.signal !== null ? `was killed by ${exit.signal}` : exit.code === null ? 'did not start' : `exited with code ${exit.code}`;
    throw new Error(`QEMU ${how}${exit.tail === '' ? '.' : `; its last lines:\n${exit.tail}`}`);
  }
}

/**
 * The guest's console on this process's stdin and stdout (a terminal raw, its Ctrl-C calling
 * `stop`); returns how to give the terminal back.
 */
function attachTerminal(console: SharedConsole | undefined, stop: () => void): () => void {
  const tty = process.stdin.isTTY;
  const keys = tty ? new TerminalKeys(stop) : undefined;
  const input = keys === undefined ? process.stdin : process.stdin.pipe(keys);
  if (tty) process.stdin.setRawMode(true);
  const disconnect = console?.connect({ output: process.stdout, input }, { replay: true });
  return () => {
    disconnect?.();
    if (tty) process.stdin.setRawMode(false);
    if (keys !== undefined) process.stdin.unpipe(keys);
    process.stdin.pause();
  };
}

export function addRunCommand(program: Command): void {
  program
    .command('run')
    .description('boot a Linux VM under QEMU with every paravirt device, served by this process; its console on the terminal')
    .option('--qemu <path>', "qemu-system-x86_64 to run (default: the lab's, see `npm run lab:setup`)")
    .option('--kernel <path>', "the guest's kernel (default: the lab's)")
    .option('--initrd <path>', "the guest's initramfs (default: the lab's, which gives a shell on the console)")
    .option('--disk <image>', 'a raw disk image for the virtio-blk disk (default: a 256 MiB scratch disk)')
    .option('--tap <ifname>', "plug this host TAP interface into the VM's network switch (needs CAP_NET_ADMIN)")
    .addOption(new Option('--memory <size>', 'guest RAM, such as 512M or 2G').argParser(memorySize).default(512, '512M'))
    .addOption(new Option('--cpus <n>', 'virtual CPUs').argParser(integerIn('--cpus', 1, 64)).default(1))
    .option('--append <words>', 'more kernel command line words')
    .option('--dir <path>', "directory for the VM's sockets and scratch disks, kept afterwards (default: a fresh one, removed)")
    .option('--print-qemu-cmdline', 'print the QEMU command line and exit')
    .addOption(commanderOption(POLL_OPTION))
    .addOption(
      new Option('--http <host:port>', 'serve the dashboard (console, display, counters, controls) here; it authenticates nobody: keep it on loopback')
        .argParser(listenAddress('--http'))
        .default(DEFAULT_HTTP, '127.0.0.1:7080'),
    )
    .option('--no-http', 'serve no dashboard')
    .addOption(new Option('--log-level <level>', 'least severe level of the JSON log lines written to stderr').argParser(logLevel).default('warn'))
    .action(async (options: RunOptions) => run(options));
}

