/**
 * `paravirt gpu --control PATH screenshot FILE | mode WxH | status`: the host's view and controls
 * of a running `paravirt serve gpu --control PATH`, through its control socket.
 */
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { type GpuControlRequest, gpuControlRequest } from '../devices/gpu/control.ts';

async function ask(path: string, request: GpuControlRequest): Promise<Extract<Awaited<ReturnType<typeof gpuControlRequest>>, { ok: true }>> {
  const reply = await gpuControlRequest(path, request);
  if (!reply.ok) throw new Error(reply.error);
  return reply;
}

function scanoutNumber(text: string): number {
  if (!/^\d+$/.test(text)) throw new Error(`--scanout must be a scanout number such as 0, not "${text}".`);
  return Number(text);
}

export function addGpuCommand(program: Command): void {
  const gpu = program
    .command('gpu')
    .description('look at and control a running `paravirt serve gpu` through its --control socket')
    .requiredOption('--control <path>', 'the control socket of the running gpu')
    .option('--scanout <n>', 'the scanout (display) to use', '0');
  const opts = (): { path: string; scanout: number } => {
    const o = gpu.opts<{ control: string; scanout: string }>();
    return { path: o.control, scanout: scanoutNumber(o.scanout) };
  };
  gpu
    .command('screenshot <file>')
    .description('write what the scanout shows as a PNG file')
    .action(async (file: string) => {
      const { path, scanout } = opts();
      const reply = await ask(path, { op: 'screenshot', scanout });
      try {
        writeFileSync(file, Buffer.from(reply.png ?? '', 'base64'));
      } catch (err) {
        throw new Error(`cannot write the screenshot to ${file}: ${(err as Error).message}.`, { cause: err });
      }
      process.stdout.write(JSON.stringify({ file, width: reply.width, height: reply.height }) + '\n');
    });
  gpu
    .command('mode <size>')
    .description('change the display mode to SIZE (1280x800): the guest is told of a display change')
    .action(async (size: string) => {
      const m = /^(\d+)x(\d+)$/.exec(size);
      if (m === null) throw new Error(`mode must be WIDTHxHEIGHT such as 1280x800, not "${size}".`);
      const { path, scanout } = opts();
      const reply = await ask(path, { op: 'mode', scanout, width: Number(m[1]), height: Number(m[2]) });
      process.stdout.write(JSON.stringify(reply.status) + '\n');
    });
  gpu
    .command('status')
    .description('each scanout\'s mode and shown size, and the cursor')
    .action(async () => {
      process.stdout.write(JSON.stringify((await ask(opts().path, { op: 'status' })).status) + '\n');
    });
}
