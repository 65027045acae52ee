import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { EventFd } from '../../../src/native/eventfd.ts';
import { SyscallError } from '../../../src/native/syscall-error.ts';
import { watch, whenReadable } from '../../../src/native/readiness.ts';

test('an eventfd counts signals and resets when taken', () => {
  const e = EventFd.create();
  assert.equal(e.take(), 0n, 'nothing signalled reads as 0 without blocking');
  e.signal();
  e.signal(4n);
  assert.equal(e.take(), 5n);
  assert.equal(e.take(), 0n);
  e.close();
});

test('a semaphore eventfd hands out one signal per take', () => {
  const e = EventFd.create({ initial: 2, semaphore: true });
  assert.equal(e.take(), 1n);
  assert.equal(e.take(), 1n);
  assert.equal(e.take(), 0n);
  e.close();
});

test('a write to an eventfd wakes the readiness waiter', async () => {
  const e = EventFd.create();
  const woken = whenReadable(e.fd);
  e.signal(3n);
  await woken;
  assert.equal(e.take(), 3n);
  e.close();
});

test('a watcher runs once per burst of signals when it drains the counter', async () => {
  const e = EventFd.create();
  const seen: bigint[] = [];
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const w = watch(e.fd, {
    readable: () => {
      seen.push(e.take());
      if (seen.reduce((a, b) => a + b, 0n) === 3n) done();
      else queueMicrotask(() => e.signal(1n));
    },
  });
  e.signal(1n);
  await finished;
  w.close();
  e.close();
  assert.deepEqual(seen, [1n, 1n, 1n]);
});

test('one descriptor cannot have two watchers', () => {
  const e = EventFd.create();
  const w = watch(e.fd, { readable: () => undefined });
  assert.throws(() => watch(e.fd, { readable: () => undefined }), /already has a readiness watcher/);
  w.close();
  const again = watch(e.fd, { readable: () => undefined });
  again.close();
  e.close();
});

test('bad increments are refused', () => {
  const e = EventFd.create();
  assert.throws(() => e.signal(0n), RangeError);
  assert.throws(() => e.signal(2n ** 64n - 1n), RangeError);
  e.close();
});

test('descriptors epoll cannot watch are refused with a SyscallError, not a crash', () => {
  const file = openSync(fileURLToPath(import.meta.url), 'r');
  assert.throws(
    () => watch(file, { readable: () => undefined }),
    (e: unknown) => e instanceof SyscallError && e.syscall === 'epoll_ctl' && e.code === 'EPERM' && /checking that fd \d+ can be watched/.test(e.message),
  );
  closeSync(file);
  assert.throws(() => watch(999_999, { readable: () => undefined }), (e: unknown) => e instanceof SyscallError && e.code === 'EBADF');
  // The refused number is not left registered: an eventfd that reuses it can be watched.
  const e = EventFd.create();
  assert.equal(e.fd, file, 'Linux hands out the lowest free descriptor');
  watch(e.fd, { readable: () => undefined }).close();
  e.close();
});
