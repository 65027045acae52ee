import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { PassThrough, Writable } from 'node:stream';
import { SharedConsole } from '../../../src/run/shared-console.ts';

/** A viewer's output that keeps what it is written. */
function collector(): { output: PassThrough; text: () => string } {
  const output = new PassThrough();
  let text = '';
  output.on('data', (chunk: Buffer) => (text += chunk.toString()));
  return { output, text: () => text };
}

/** Write `text` as the guest would (through the console port's host link) and wait for it to be taken. */
function guestWrites(shared: SharedConsole, text: string): Promise<void> {
  return new Promise((resolve, reject) => shared.link.output.write(Buffer.from(text), (err) => (err ? reject(err) : resolve())));
}

test('every viewer sees all the guest output; a late viewer is shown the recent output first', async () => {
  const shared = new SharedConsole();
  const a = collector();
  shared.connect({ output: a.output });
  await guestWrites(shared, 'login: ');
  const b = collector();
  shared.connect({ output: b.output }, { replay: true });
  await guestWrites(shared, 'root\n');
  assert.equal(a.text(), 'login: root\n');
  assert.equal(b.text(), 'login: root\n');
  assert.equal(shared.recent().toString(), 'login: root\n');
});

test('what any viewer types reaches the guest; a disconnected viewer no longer sees or types', async () => {
  const shared = new SharedConsole();
  const typedA = new PassThrough();
  const typedB = new PassThrough();
  const a = collector();
  shared.connect({ output: a.output, input: typedA });
  const disconnectB = shared.connect({ output: new PassThrough(), input: typedB });
  const guestInput = shared.link.input!;
  typedA.write('ls\n');
  assert.equal((await once(guestInput, 'data'))[0].toString(), 'ls\n');
  typedB.write('pwd\n');
  assert.equal((await once(guestInput, 'data'))[0].toString(), 'pwd\n');
  disconnectB();
  typedB.write('ignored\n');
  typedA.write('id\n');
  assert.equal((await once(guestInput, 'data'))[0].toString(), 'id\n');
});

test('a full viewer holds the guest back until it drains; nothing is dropped', async () => {
  const shared = new SharedConsole();
  const parts: string[] = [];
  let release: (() => void) | undefined;
  // A viewer that takes one chunk and then stalls until released.
  const slow = new Writable({
    highWaterMark: 1,
    write(chunk: Buffer, _encoding, done) {
      parts.push(chunk.toString());
      release = done;
    },
  });
  shared.connect({ output: slow });
  let taken = false;
  const first = guestWrites(shared, 'one').then(() => (taken = true));
  // The port's write is not complete while the slow viewer has not drained.
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(taken, false);
  release!();
  await first;
  const second = guestWrites(shared, 'two');
  await new Promise((resolve) => setImmediate(resolve));
  release!();
  await second;
  assert.deepEqual(parts, ['one', 'two']);
});

test('a viewer whose output closes is disconnected by itself', async () => {
  const shared = new SharedConsole();
  const gone = collector();
  shared.connect({ output: gone.output });
  gone.output.destroy();
  await once(gone.output, 'close');
  const stays = collector();
  shared.connect({ output: stays.output });
  await guestWrites(shared, 'still here');
  assert.equal(stays.text(), 'still here');
});
