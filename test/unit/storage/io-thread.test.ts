import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IoThreads, Op } from '../../../src/storage/io-thread.ts';
import { SLOTS } from '../../../src/storage/io-ring.ts';
import { SyscallError } from '../../../src/native/syscall-error.ts';

async function withFile(bytes: Uint8Array, body: (fd: number) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'paravirt-io-'));
  const path = join(dir, 'disk.img');
  await writeFile(path, bytes);
  const file = await open(path, 'r+');
  try {
    await body(file.fd);
  } finally {
    await file.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** One vectored call through `threads`: the bytes it transferred, or its error as a rejection. */
function transfer(threads: IoThreads, op: Op, fd: number, position: number, segments: readonly Uint8Array[]): Promise<number> {
  return new Promise((resolve, reject) =>
    threads.submit(op, fd, position, segments, (_, result) => (typeof result === 'number' ? resolve(result) : reject(result)), undefined),
  );
}

const pattern = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) & 0xff);

test('more transfers than the rings hold all complete, each with its own bytes', async () => {
  const data = pattern(512 * 1024);
  await withFile(data, async (fd) => {
    const threads = new IoThreads(2);
    try {
      const count = SLOTS * 3;
      const buffers = Array.from({ length: count }, () => [new Uint8Array(100), new Uint8Array(412)]);
      const done = await Promise.all(buffers.map((segs, i) => transfer(threads, Op.read, fd, i * 512, segs)));
      assert.deepEqual(done, new Array(count).fill(512));
      buffers.forEach(([a, b], i) => assert.deepEqual(new Uint8Array([...a, ...b]), data.subarray(i * 512, i * 512 + 512)));
      assert.equal(threads.inFlight, 0);
    } finally {
      await threads.close();
    }
  });
});

test('a write lands where asked; a read past the end is short; a bad descriptor is a SyscallError', async () => {
  await withFile(new Uint8Array(4096), async (fd) => {
    const threads = new IoThreads(1);
    try {
      assert.equal(await transfer(threads, Op.write, fd, 1024, [pattern(16)]), 16);
      const back = new Uint8Array(16);
      assert.equal(await transfer(threads, Op.read, fd, 1024, [back]), 16);
      assert.deepEqual(back, pattern(16));
      assert.equal(await transfer(threads, Op.read, fd, 4000, [new Uint8Array(200)]), 96);
      await assert.rejects(transfer(threads, Op.read, -1, 0, [back]), (err: unknown) => err instanceof SyscallError && err.code === 'EBADF');
    } finally {
      await threads.close();
    }
  });
});

test('after close, transfers are refused with an error saying so', async () => {
  const threads = new IoThreads(1);
  await threads.close();
  await assert.rejects(transfer(threads, Op.read, 0, 0, [new Uint8Array(1)]), /closed/);
});

test('a thread left idle stays and serves the next transfer: none starts again after a pause', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  await withFile(pattern(4096), async (fd) => {
    const threads = new IoThreads(1, 1000);
    try {
      const buf = new Uint8Array(16);
      assert.equal(await transfer(threads, Op.read, fd, 0, [buf]), 16);
      t.mock.timers.tick(60_000);
      assert.equal(threads.running, 1, 'the idle thread is still there');
      assert.equal(await transfer(threads, Op.read, fd, 16, [buf]), 16);
      assert.deepEqual(buf, pattern(32).subarray(16));
      assert.equal(threads.started, 1, 'served by the thread that was already running');
    } finally {
      await threads.close();
    }
  });
});

test('a second thread starts when the first is busy, stops after idleMs, and the first serves on', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  await withFile(pattern(4096), async (fd) => {
    const threads = new IoThreads(2, 1000);
    try {
      const a = new Uint8Array(16);
      const b = new Uint8Array(16);
      assert.equal(await transfer(threads, Op.read, fd, 0, [a]), 16);
      // The first thread serves and is busy with the first of these when the second comes.
      assert.deepEqual(await Promise.all([transfer(threads, Op.read, fd, 16, [a]), transfer(threads, Op.read, fd, 32, [b])]), [16, 16]);
      assert.deepEqual([...a, ...b], [...pattern(48).subarray(16)]);
      assert.equal(threads.running, 2);
      t.mock.timers.tick(999);
      assert.equal(threads.running, 2, 'not idle long enough yet');
      t.mock.timers.tick(1);
      assert.equal(threads.running, 1, 'the second thread stopped, the first stays');
      assert.equal(await transfer(threads, Op.read, fd, 0, [a]), 16);
      assert.deepEqual(a, pattern(16));
      assert.equal(threads.started, 2, 'no thread started again');
    } finally {
      await threads.close();
    }
  });
});

/** Threads of this process now (each I/O thread is one). */
const osThreads = async (): Promise<number> => (await readdir('/proc/self/task')).length;

test('warm() starts the first thread before any transfer, once, and the first transfer is served by it', async () => {
  await withFile(pattern(4096), async (fd) => {
    const threads = new IoThreads(2);
    try {
      assert.equal(threads.started, 0, 'nothing starts with the constructor');
      threads.warm();
      threads.warm();
      assert.equal(threads.running, 1, 'started before the first transfer is submitted');
      assert.equal(threads.started, 1, 'warming again starts no other');
      const buf = new Uint8Array(16);
      assert.equal(await transfer(threads, Op.read, fd, 0, [buf]), 16);
      assert.deepEqual(buf, pattern(16));
      assert.equal(threads.started, 1, 'the first transfer went to the warmed thread');
    } finally {
      await threads.close();
    }
  });
});

test('closing warmed threads that never transferred leaves no thread behind; warm() after close starts none', async () => {
  await withFile(pattern(512), async () => {
    const before = await osThreads();
    const threads = new IoThreads(1);
    threads.warm();
    assert.ok((await osThreads()) > before, 'the warmed thread runs');
    await threads.close();
    assert.equal(threads.running, 0);
    assert.equal(await osThreads(), before, 'its thread is gone');
    threads.warm();
    assert.equal(threads.started, 1);
    assert.equal(await osThreads(), before);
  });
});
