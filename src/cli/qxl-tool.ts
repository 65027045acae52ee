/**
 * `paravirt qxl --control PATH png FILE | status | resize WxH`: the screen, state and monitor size of a running
 * `paravirt serve qxl --control PATH`, through its control socket.
 */
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { controlRequest, type ControlRequest } from '../devices/qxl/control.ts';

/** "1280x800" as width and height; anything else is an Error of one sentence. */
function parseSize(text: string): { width: number; height: number } {
  const m = /^(\d+)x(\d+)$/.exec(text.trim());
  if (m === null) throw new Error(`a monitor size is WIDTHxHEIGHT such as 1280x800, not "${text}".`);
  return { width: Number(m[1]), height: Number(m[2]) };
}

async function png(path: string, file: string): Promise<void> {
  const reply = await controlRequest(path, { op: 'png' });
  if (!reply.ok) throw new Error(reply.error);
  if (reply.png === undefined) throw new Error(`the qxl control socket ${path} answered without an image`);
  try {
    await writeFile(file, Buffer.from(reply.png, 'base64'));
  } catch (err) {
    throw new Error(`cannot write the screenshot to ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  process.stdout.write(JSON.stringify({ file, width: reply.width, height: reply.height }) + '\n');
}

async function status(path: string, request: ControlRequest = { op: 'status' }): Promise<void> {
  const reply = await controlRequest(path, request);
  if (!reply.ok) throw new Error(reply.error);
  process.stdout.write(JSON.stringify(reply.status) + '\n');
}

export function addQxlCommand(program: Command): void {
  const qxl = program
    .command('qxl')
    .description('look at a running `paravirt serve qxl` through its --control socket')
    .requiredOption('--control <path>', 'the control socket of the running QXL display');
  const path = (): string => qxl.opts<{ control: string }>().control;
  qxl.command('png <file>').description('write the primary surface (the guest\'s screen) as a PNG file').action((file: string) => png(path(), file));
  qxl.command('status').description('primary surface, monitors, cursor, counters, and a guest bug if any').action(() => status(path()));
  qxl
    .command('resize <size>')
    .description('tell the guest the monitor is now WIDTHxHEIGHT (its preferred mode)')
    .action((size: string) => status(path(), { op: 'resize', ...parseSize(size) }));
}
