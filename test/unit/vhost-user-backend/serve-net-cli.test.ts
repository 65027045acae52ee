/**
 * `paravirt serve net` options as a user gives them: the capabilities it prints, and each bad
 * option refused with one sentence naming it and exit code 1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PARAVIRT = fileURLToPath(new URL('../../../bin/paravirt.js', import.meta.url));

function paravirt(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [PARAVIRT, 'serve', 'net', ...args], { cwd: tmpdir(), encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('serve net --print-capabilities prints {"type":"net"} and exits 0', () => {
  const r = paravirt('--print-capabilities');
  assert.equal(r.code, 0);
  assert.deepEqual(JSON.parse(r.stdout), { type: 'net' });
});

test('serve net refuses a bad option with one sentence naming it, and exit code 1', () => {
  const socket = join(tmpdir(), `paravirt-net-cli-${process.pid}.sock`);
  const cases: [string[], RegExp][] = [
    [[], /one of --socket-path <path> or --fd <n> is required/],
    [['--socket-path', socket, '--mac', '52:54:00:12:34'], /--mac must be six hexadecimal bytes/],
    [['--socket-path', socket, '--tunnel', 'example.org:4789'], /--tunnel must be an IP address and a port/],
    [['--socket-path', socket, '--tunnel', '127.0.0.1:70000'], /--tunnel must be an IP address and a port from 1 to 65535/],
    [['--socket-path', socket, '--tunnel-local', '127.0.0.1:4789'], /--tunnel-local needs --tunnel/],
    [['--socket-path', socket, '--queues', '257'], /--queues must be an integer from 1 to 256, not "257"/],
    [['--socket-path', socket, '--fd', '3'], /cannot be used with/],
  ];
  for (const [args, message] of cases) {
    const r = paravirt(...args);
    assert.equal(r.code, 1, `exit code of ${args.join(' ')}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
  }
});
