/**
 * `paravirt blk` as a user runs it, against this project's back-end served in the test process:
 * info names capacity and features, write then read shows the bytes, bench prints IOPS, and a
 * missing socket is one sentence with exit code 1.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { BlkDevice } from '../../../src/devices/blk/device.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { BackendServer } from '../../../src/transports/vhost-user/backend-server.ts';

const PARAVIRT = fileURLToPath(new URL('../../../bin/paravirt.js', import.meta.url));

/** Run the command without blocking this process's event loop, which serves the back-end. */
function paravirt(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [PARAVIRT, ...args], { cwd: tmpdir(), encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
    });
  });
}

function serve(t: TestContext): { socketPath: string; dir: string; disk: MemoryBackend } {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-blk-tool-'));
  const socketPath = join(dir, 'vhost.sock');
  const disk = new MemoryBackend(2 << 20);
  const server = BackendServer.listen(new BlkDevice({ backend: disk, queues: 2, queueSize: 128 }), { socketPath }, pino({ level: 'silent' }));
  t.after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { socketPath, dir, disk };
}

test('info prints the capacity, the queues and the negotiated features by name', async (t) => {
  const { socketPath } = serve(t);
  const r = await paravirt('blk', '--socket-path', socketPath, 'info');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^capacity +4096 sectors \(2\.0 MiB\)$/m);
  assert.match(r.stdout, /^queues +2$/m);
  assert.match(r.stdout, /^features +.*\bFLUSH\b.*\bMQ\b.*\bDISCARD\b.*\bVERSION_1\b/m);
  assert.match(r.stdout, /^protocol +.*\bREPLY_ACK\b/m);
});

test('write fills sectors, read shows them as a hex dump', async (t) => {
  const { socketPath, dir, disk } = serve(t);
  const file = join(dir, 'data.bin');
  writeFileSync(file, new Uint8Array(512).fill(0x5a));
  assert.equal((await paravirt('blk', '--socket-path', socketPath, 'write', '--sector', '2', '--file', file)).stdout, 'wrote 1 sector at sector 2\n');
  assert.equal((await paravirt('blk', 'write', '--socket-path', socketPath, '--sector', '3', '--fill', '65')).code, 0);
  assert.deepEqual(disk.bytes.subarray(1024, 1536), new Uint8Array(512).fill(0x5a));
  const r = await paravirt('blk', '--socket-path', socketPath, 'read', '--sector', '3');
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  assert.equal(lines.length, 32, '512 bytes, 16 a line');
  assert.equal(lines[0], `0000000600  ${Array(16).fill('41').join(' ')}  AAAAAAAAAAAAAAAA`);
});

test('bench runs random reads and prints the IOPS', async (t) => {
  const { socketPath } = serve(t);
  const r = await paravirt('blk', '--socket-path', socketPath, 'bench', '--seconds', '1', '--depth', '4');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^random reads of 4096 bytes at depth 4: \d+ IOPS, [\d.]+ MiB\/s over [\d.]+ s$/m);
});

test('bench runs with the driver never polling, and a poll budget out of range is one sentence', async (t) => {
  const { socketPath } = serve(t);
  const r = await paravirt('blk', '--socket-path', socketPath, '--poll-us', '0', 'bench', '--seconds', '1', '--depth', '4');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^random reads of 4096 bytes at depth 4: \d+ IOPS/m);
  const bad = await paravirt('blk', '--socket-path', socketPath, '--poll-us', 'soon', 'bench');
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--poll-us must be an integer from 0 to 1000000, not "soon"/);
});

test('a missing socket, a missing option or a range past the disk is one sentence and exit code 1', async (t) => {
  const { socketPath, dir } = serve(t);
  const cases: [string[], RegExp][] = [
    [['blk', '--socket-path', join(dir, 'none.sock'), 'info'], /^paravirt: vhost-user socket .*none\.sock does not exist\n$/],
    [['blk', 'info'], /^error: --socket-path <path> is required\.\n$/],
    [['blk', '--socket-path', socketPath, 'read', '--sector', '4095', '--count', '2'], /^error: sectors 4095 to 4096 reach past the end of the disk \(4096 sectors\)\.\n$/],
    [['blk', '--socket-path', socketPath, 'write', '--sector', '0'], /^error: one of --file <path> or --fill <byte> is required\.\n$/],
    [['blk', '--socket-path', socketPath, 'write', '--sector', '0', '--file', join(dir, 'none.bin')], /^error: --file .*none\.bin cannot be read: .*\.\n$/],
  ];
  for (const [args, message] of cases) {
    const r = await paravirt(...args);
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, message);
  }
});
