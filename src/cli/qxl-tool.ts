/**
 * `paravirt qxl --control PATH png FILE | status`: the screen and state of a running
 * `paravirt serve qxl --control PATH`, through its control socket.
 */
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { controlRequest } from '../devices/qxl/control.ts';

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

async function status(path: string): Promise<void> {
  const reply = await controlRequest(path, { op: 'status' });
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
}
