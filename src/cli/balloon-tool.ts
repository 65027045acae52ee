/**
 * `paravirt balloon --control PATH set SIZE [--wait SECONDS] | status | stats`: the host's controls of a running
 * `paravirt serve balloon --control PATH`, through its control socket.
 */
import type { Command } from 'commander';
import { RequestTimeout } from '../devices/local-socket.ts';
import { controlRequest, parseSize, type ControlReply, type ControlRequest } from '../devices/balloon/control.ts';
import { integerIn } from '../devices/host-options.ts';

async function ask(path: string, request: ControlRequest, timeoutMs?: number): Promise<Extract<ControlReply, { ok: true }>> {
  const reply = await controlRequest(path, request, timeoutMs);
  if (!reply.ok) throw new Error(reply.error);
  return reply;
}

async function run(path: string, request: ControlRequest): Promise<void> {
  const reply = await ask(path, request);
  process.stdout.write(JSON.stringify(request.op === 'stats' ? reply.stats : reply.status) + '\n');
}

/** Set the target, then, with `waitSeconds`, wait until the guest's actual reaches it. */
async function set(path: string, bytes: number, waitSeconds: number | undefined): Promise<void> {
  if (waitSeconds === undefined) return run(path, { op: 'set', bytes });
  await ask(path, { op: 'set', bytes });
  try {
    const reply = await ask(path, { op: 'wait' }, waitSeconds * 1000);
    process.stdout.write(JSON.stringify(reply.status) + '\n');
  } catch (err) {
    if (!(err instanceof RequestTimeout)) throw err;
    const { status } = await ask(path, { op: 'status' });
    throw new Error(`after ${waitSeconds} seconds the guest's balloon holds ${status?.actualBytes} bytes, not the ${status?.targetBytes} asked for.`, { cause: err });
  }
}

export function addBalloonCommand(program: Command): void {
  const balloon = program
    .command('balloon')
    .description('control a running `paravirt serve balloon` through its --control socket')
    .requiredOption('--control <path>', 'the control socket of the running balloon');
  const path = (): string => balloon.opts<{ control: string }>().control;
  balloon
    .command('set <size>')
    .description('ask the guest for a balloon of SIZE (256M, 1G, bytes); 0 gives all memory back')
    .option('--wait <seconds>', 'then wait up to SECONDS until the guest has followed', integerIn('--wait', 1, 86400))
    // "-5M" is a size to refuse with its own sentence, not an unknown option.
    .allowUnknownOption()
    .action((size: string, options: { wait?: number }) => set(path(), parseSize(size), options.wait));
  balloon.command('status').description('target, actual and released memory, in bytes').action(() => run(path(), { op: 'status' }));
  balloon.command('stats').description('the last memory statistics the guest sent, with units').action(() => run(path(), { op: 'stats' }));
}
