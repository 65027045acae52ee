/**
 * `paravirt balloon --control PATH set SIZE | status | stats`: the host's controls of a running
 * `paravirt serve balloon --control PATH`, through its control socket.
 */
import type { Command } from 'commander';
import { controlRequest, parseSize, type ControlRequest } from '../devices/balloon/control.ts';

async function run(path: string, request: ControlRequest): Promise<void> {
  const reply = await controlRequest(path, request);
  if (!reply.ok) throw new Error(reply.error);
  process.stdout.write(JSON.stringify(request.op === 'stats' ? reply.stats : reply.status) + '\n');
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
    // "-5M" is a size to refuse with its own sentence, not an unknown option.
    .allowUnknownOption()
    .action((size: string) => run(path(), { op: 'set', bytes: parseSize(size) }));
  balloon.command('status').description('target, actual and released memory, in bytes').action(() => run(path(), { op: 'status' }));
  balloon.command('stats').description('the last memory statistics the guest sent, with units').action(() => run(path(), { op: 'stats' }));
}
