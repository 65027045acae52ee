import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listenLocal, readLines } from '../../../src/devices/local-socket.ts';

function dir(t: { after(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'local-socket-'));
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

test('a path holding a regular file is refused by name and the file is kept', async (t) => {
  const path = join(dir(t), 'data.txt');
  writeFileSync(path, 'keep me');
  await assert.rejects(listenLocal(path, 'test control socket', () => {}), /^Error: test control socket .*data\.txt exists and is not a socket\.$/);
  assert.equal(readFileSync(path, 'utf8'), 'keep me');
});

test('a control socket is the owner\'s alone, reads lines, and close ends its connections and removes it', async (t) => {
  const path = join(dir(t), 'c.sock');
  const server = await listenLocal(path, 'test control socket', (socket) =>
    readLines(socket, 16, (line) => socket.write(`${line.toUpperCase()}\n`), () => socket.end('too long\n')),
  );
  assert.equal(statSync(path).mode & 0o777, 0o600);
  const client = connect(path);
  client.setEncoding('utf8');
  const reply = new Promise<string>((resolve) => client.once('data', resolve));
  client.write('hello\n');
  assert.equal(await reply, 'HELLO\n');
  const ended = new Promise((resolve) => client.on('close', resolve));
  await server.close();
  await ended;
  assert.equal(existsSync(path), false);
});
