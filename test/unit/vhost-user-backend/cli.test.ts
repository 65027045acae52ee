/**
 * The `paravirt` command as a user runs it: from another directory, with good and bad options,
 * serving an inherited socket, and ending cleanly on SIGTERM.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectUnix, socketPair, UnixListener } from '../../../src/native/unix-socket.ts';
import { whenReadable } from '../../../src/native/readiness.ts';
import { FrontendRequest as F, VHOST_USER_F_PROTOCOL_FEATURES } from '../../../src/transports/vhost-user/constants.ts';
import { encodeMessage } from '../../../src/transports/vhost-user/messages.ts';
import { MessageReader } from '../../../src/transports/vhost-user/reader.ts';
import type { UnixSocket } from '../../../src/native/unix-socket.ts';

const PARAVIRT = fileURLToPath(new URL('../../../bin/paravirt.js', import.meta.url));

/** Run the command to completion from a directory outside the project. */
function paravirt(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [PARAVIRT, ...args], { cwd: tmpdir(), encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function getFeatures(socket: UnixSocket): Promise<bigint> {
  socket.send(encodeMessage('frontend-requests', { request: F.GET_FEATURES, payload: { kind: 'empty' } }).bytes);
  const reader = new MessageReader('frontend-replies');
  for (;;) {
    const next = reader.next();
    if (next.type === 'message' && next.message.payload.kind === 'u64') return next.message.payload.value;
    assert.equal(next.type, 'need-more');
    await whenReadable(socket.fd);
    const got = socket.receive();
    if (got !== null) reader.push(got.bytes, got.fds);
  }
}

test('--print-capabilities prints the vhost-user.json capabilities and exits 0', () => {
  const blk = paravirt('serve', 'blk', '--print-capabilities');
  assert.equal(blk.code, 0);
  assert.deepEqual(JSON.parse(blk.stdout), { type: 'block', features: ['read-only', 'blk-file'] });
  const rng = paravirt('serve', 'rng', '--print-capabilities');
  assert.equal(rng.code, 0);
  assert.deepEqual(JSON.parse(rng.stdout), { type: 'rng' });
});

test('a bad option, path or size is one sentence naming it, and exit code 1', () => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-cli-'));
  try {
    const odd = join(dir, 'odd.img');
    writeFileSync(odd, new Uint8Array(1000));
    const cases: [string[], RegExp][] = [
      [['serve', 'blk', '--socket-path', join(dir, 's')], /--image <path> is required/],
      [['serve', 'blk', '--image', odd], /one of --socket-path <path> or --fd <n> is required/],
      [['serve', 'blk', '--socket-path', join(dir, 's'), '--image', join(dir, 'missing.img')], /disk image .*missing\.img does not exist/],
      [['serve', 'blk', '--socket-path', join(dir, 's'), '--image', odd], /odd\.img is 1000 bytes, not a whole number of 512-byte sectors/],
      [['serve', 'blk', '--socket-path', join(dir, 's'), '--image', odd, '--queues', '0'], /--queues must be an integer from 1 to 256, not "0"/],
      [['serve', 'rng', '--socket-path', join(dir, 's'), '--log-level', 'loud'], /--log-level must be one of/],
      [['serve', 'rng', '--socket-path', odd], /socket path .*odd\.img exists and is not a socket/],
      [['serve', 'rng', '--socket-path', join(dir, 's'), '--fd', '3'], /cannot be used with/],
      [['serve', 'net', '--socket-path', join(dir, 's'), '--mac', '01:00:5e:00:00:01'], /--mac must be a unicast address/],
      [['serve', 'rng', '--fd', '77'], /--fd 77 is not an open descriptor/],
    ];
    for (const [args, message] of cases) {
      const r = paravirt(...args);
      assert.equal(r.code, 1, `exit code of ${args.join(' ')}`);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--fd serves an inherited listening socket, and SIGTERM ends the command with code 0', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-cli-'));
  const path = join(dir, 'rng.sock');
  const listener = UnixListener.listen(path);
  try {
    // The listening socket becomes the child's fd 3.
    const child = spawn(process.execPath, [PARAVIRT, 'serve', 'rng', '--fd', '3', '--log-level', 'warn'], {
      cwd: tmpdir(),
      stdio: ['ignore', 'pipe', 'pipe', listener.fd],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const socket = await connectUnix(path);
    const features = await getFeatures(socket);
    assert.ok(features & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)));
    socket.close();
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
  } finally {
    listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--fd naming a socket that does not listen ends the command with one sentence and code 1', async () => {
  const [mine, theirs] = socketPair();
  try {
    const child = spawn(process.execPath, [PARAVIRT, 'serve', 'rng', '--fd', '3', '--log-level', 'silent'], {
      cwd: tmpdir(),
      stdio: ['ignore', 'pipe', 'pipe', theirs.fd],
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    // Make the connected socket readable: the server tries to accept on it, which fails.
    mine.send(new Uint8Array([1]));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    assert.equal(code, 1);
    assert.match(stderr, /the listening socket failed/);
    assert.equal(stderr.trim().split('\n').length, 1);
  } finally {
    mine.close();
    theirs.close();
  }
});
