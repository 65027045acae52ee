/** `paravirt run --http HOST:PORT`: what it takes, and the one sentence for what it does not. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { listenAddress } from '../../../src/cli/options.ts';
import { addRunCommand } from '../../../src/cli/run.ts';

test('--http takes HOST:PORT, an IPv6 address in brackets, port 0 for any', () => {
  const parse = listenAddress('--http');
  assert.deepEqual(parse('127.0.0.1:7080'), { host: '127.0.0.1', port: 7080 });
  assert.deepEqual(parse('localhost:0'), { host: 'localhost', port: 0 });
  assert.deepEqual(parse('[::1]:8080'), { host: '::1', port: 8080 });
  for (const bad of ['7080', 'localhost', ':7080', 'host:65536', 'host:-1', '::1:80', 'a b:80', '[]:80']) {
    assert.throws(() => parse(bad), { message: `--http must be HOST:PORT with a port from 0 to 65535, such as 127.0.0.1:7080, not "${bad}".` }, bad);
  }
});

test('paravirt run serves the dashboard on loopback unless told otherwise; --no-http serves none', async () => {
  const parsed: unknown[] = [];
  for (const args of [[], ['--http', '0.0.0.0:80'], ['--no-http']]) {
    const program = new Command().exitOverride();
    addRunCommand(program);
    program.commands[0].action((options: { http: unknown }) => void parsed.push(options.http));
    await program.parseAsync(['node', 'paravirt', 'run', ...args]);
  }
  assert.deepEqual(parsed, [{ host: '127.0.0.1', port: 7080 }, { host: '0.0.0.0', port: 80 }, false]);
});
