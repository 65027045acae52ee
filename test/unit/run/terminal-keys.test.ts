import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TerminalKeys } from '../../../src/run/terminal-keys.ts';

/** What the guest gets for `typed`, and how many times the VM was asked to stop. */
async function keys(...typed: number[][]): Promise<{ guest: number[]; stops: number }> {
  let stops = 0;
  const t = new TerminalKeys(() => stops++);
  const guest: number[] = [];
  t.on('data', (chunk: Buffer) => guest.push(...chunk));
  for (const chunk of typed) t.write(Buffer.from(chunk));
  t.end();
  await new Promise((resolve) => t.on('end', resolve));
  return { guest, stops };
}

test('keys pass through; Ctrl-C stops the VM instead of reaching the guest', async () => {
  assert.deepEqual(await keys([0x6c, 0x73, 0x0d]), { guest: [0x6c, 0x73, 0x0d], stops: 0 });
  assert.deepEqual(await keys([0x61, 0x03, 0x62]), { guest: [0x61, 0x62], stops: 1 });
});

test('Ctrl-A c sends Ctrl-C, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A before another key sends both, across chunks', async () => {
  assert.deepEqual(await keys([0x01], [0x63]), { guest: [0x03], stops: 0 });
  assert.deepEqual(await keys([0x01, 0x01]), { guest: [0x01], stops: 0 });
  assert.deepEqual(await keys([0x01, 0x78]), { guest: [0x01, 0x78], stops: 0 });
});
