/**
 * The `paravirt` command: it serves devices to vhost-user front-ends, and drives vhost-user-blk
 * back-ends as a front-end with paravirt's own driver:
 *
 *   paravirt run [--disk IMAGE] [--memory SIZE] [--tap IF]    (a VM on every device, its console here)
 *   paravirt serve blk --socket-path S --image F [--read-only] [--queues N] [--queue-size N]
 *   paravirt serve rng --socket-path S
 *   paravirt serve net --socket-path S [--socket-path S2 ...] [--tap IF | --tunnel HOST:PORT] [--queues N] [--pcap F]
 *   paravirt blk --socket-path S info|read|write|bench   (a vhost-user-blk back-end as a disk)
 *   paravirt scsi --socket-path S info|read|write        (a vhost-user-scsi back-end's LUNs)
 *   paravirt balloon --control PATH set SIZE|status|stats (a running balloon's controls)
 *   paravirt gpu --control PATH screenshot FILE|mode WxH|status (a running gpu's screen)
 *   paravirt devices [--json]                            (the registered device types)
 *
 * `serve` follows vhost-user.rst "Backend program conventions": --socket-path or an inherited
 * --fd, --print-capabilities, no daemonizing, prompt exit on SIGTERM.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { addBalloonCommand } from './balloon-tool.ts';
import { addBlkCommand } from './blk-tool.ts';
import { addDevicesCommand } from './devices.ts';
import { addGpuCommand } from './gpu-tool.ts';
import { addRunCommand } from './run.ts';
import { addScsiCommand } from './scsi-tool.ts';
import { addServeCommand } from './serve.ts';

/**
 * The version in the package's package.json, two directories up both from src/cli/main.ts and
 * from the compiled dist/cli/main.js.
 */
function packageVersion(): string {
  const manifest = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return manifest.version;
}

/** Run the command line `argv` (as process.argv: node, script, args...); resolves to the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = new Command('paravirt')
    .description('virtio paravirtualized devices: serve them to virtual machines')
    .version(packageVersion())
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(text) });
  addRunCommand(program);
  addServeCommand(program);
  addBlkCommand(program);
  addScsiCommand(program);
  addBalloonCommand(program);
  addGpuCommand(program);
  addDevicesCommand(program);
  try {
    await program.parseAsync([...argv]);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 1;
    // Anything else is a failure to start (bad image, socket in use): one sentence on stderr.
    process.stderr.write(`paravirt: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}
