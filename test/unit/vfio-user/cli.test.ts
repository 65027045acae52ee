/**
 * `paravirt serve <type> --transport vfio-user`: the command serves the device as a PCI function
 * to a vfio-user client, ends cleanly on SIGTERM, and a bad transport is one sentence.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { whenReadable } from '../../../src/native/readiness.ts';
import { connectUnix } from '../../../src/native/unix-socket.ts';
import { Command } from '../../../src/transports/vfio-user/protocol.ts';
import { encode, fields, reply, versionPayload } from './helpers.ts';

const PARAVIRT = fileURLToPath(new URL('../../../bin/paravirt.js', import.meta.url));

test('a transport that does not exist is one sentence naming the option, and exit code 1', () => {
  const r = spawnSync(process.execPath, [PARAVIRT, 'serve', 'rng', '--socket-path', join(tmpdir(), 'x.sock'), '--transport', 'pci'], { encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--transport/);
  assert.equal(r.stderr.trim().split('\n').length, 1);
});

test('serve rng --transport vfio-user answers a client with a virtio-rng PCI function and exits 0 on SIGTERM', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-vfu-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'rng.sock');
  const child = spawn(process.execPath, [PARAVIRT, 'serve', 'rng', '--transport', 'vfio-user', '--socket-path', socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('vfio-user server listening')) resolve();
    });
  });
  const socket = await connectUnix(socketPath);
  const ask = async (bytes: Uint8Array): Promise<ReturnType<typeof reply>> => {
    socket.send(bytes);
    await whenReadable(socket.fd);
    return reply(socket.receive()!.bytes);
  };
  assert.equal((await ask(encode(0, Command.VERSION, versionPayload()))).header.error, 0);
  const config = await ask(encode(1, Command.REGION_READ, fields([8, 0], [4, 7], [4, 4])));
  assert.equal(config.view.getUint32(16, true), 0x1044_1af4, 'vendor 0x1af4, device 0x1044');
  socket.close();
  child.kill('SIGTERM');
  const [code] = (await once(child, 'exit')) as [number | null];
  assert.equal(code, 0);
});
