import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, chmod, readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DiskImageError, Op } from '../../../src/storage/block-backend.ts';
import { FileBackend } from '../../../src/storage/file-backend.ts';
import { IoThreads } from '../../../src/storage/io-thread.ts';

async function withDir(body: (dir: string) => Promise<void>, parent = tmpdir()): Promise<void> {
  const dir = await mkdtemp(join(parent, 'paravirt-blk-'));
  try {
    await body(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);

/**
 * The ways a read or write is made: on the thread pool; on I/O threads only; on I/O threads or,
 * when small and the page cache has it, on the event loop (tmpdir); on the event loop whenever
 * small, the file being in memory (/dev/shm, tmpfs).
 */
const MODES = [
  { io: 'thread-pool', inline: false, parent: tmpdir() },
  { io: 'threads', inline: false, parent: tmpdir() },
  { io: 'threads', inline: true, parent: tmpdir() },
  { io: 'threads', inline: true, parent: '/dev/shm' },
] as const;

for (const { io, inline, parent } of MODES) {
  const mode = `io ${io}${inline ? `, in line in ${parent}` : ''}`;
  test(`reads and writes go through scattered segments at any offset (${mode})`, () =>
    withDir(async (dir) => {
      const path = join(dir, 'disk.img');
      await writeFile(path, new Uint8Array(8192));
      const disk = await FileBackend.open(path, { io, inline });
      try {
        assert.equal(disk.size, 8192);
        const data = pattern(1536, 1);
        await disk.write(1024, [data.subarray(0, 100), data.subarray(100, 1000), data.subarray(1000)]);
        const a = new Uint8Array(7);
        const b = new Uint8Array(1529);
        await disk.read(1024, [a, b]);
        assert.deepEqual(new Uint8Array([...a, ...b]), data);
        await disk.flush();
      } finally {
        await disk.close();
      }
      assert.deepEqual((await readFile(path)).subarray(1024, 2560), Buffer.from(pattern(1536, 1)));
    }, parent));

  test(`more segments than one vectored call takes are all transferred (${mode})`, () =>
    withDir(async (dir) => {
      const path = join(dir, 'disk.img');
      await writeFile(path, new Uint8Array(4096 * 2));
      const disk = await FileBackend.open(path, { io, inline });
      try {
        const data = pattern(4096, 5);
        const segs = Array.from({ length: 2048 }, (_, i) => data.subarray(i * 2, i * 2 + 2));
        await disk.write(4096, segs);
        const back = new Uint8Array(4096);
        await disk.read(4096, Array.from({ length: 4096 }, (_, i) => back.subarray(i, i + 1)));
        assert.deepEqual(back, data);
      } finally {
        await disk.close();
      }
    }, parent));
}

test('on a file in memory a small transfer is done when transfer returns, a large one later on a thread', () =>
  withDir(async (dir) => {
    const path = join(dir, 'disk.img');
    await writeFile(path, pattern(1024 * 1024, 9));
    const disk = await FileBackend.open(path);
    try {
      const ended: string[] = [];
      const small = new Uint8Array(4096);
      disk.transfer(Op.read, 4096, [small], (tag, err) => ended.push(`${tag} ${err?.message ?? 'ok'}`), 'small');
      assert.deepEqual(ended, ['small ok']);
      assert.deepEqual(small, pattern(1024 * 1024, 9).subarray(4096, 8192));
      const large = new Uint8Array(512 * 1024);
      const done = new Promise<Error | undefined>((resolve) => disk.transfer(Op.read, 0, [large], (_, err) => resolve(err), undefined));
      assert.equal(ended.length, 1);
      assert.equal(await done, undefined);
      assert.deepEqual(large, pattern(1024 * 1024, 9).subarray(0, 512 * 1024));
    } finally {
      await disk.close();
    }
  }, '/dev/shm'));

test('discard and write-zeroes make the range read back as zeroes, and only that range', () =>
  withDir(async (dir) => {
    const path = join(dir, 'disk.img');
    await writeFile(path, new Uint8Array(300 * 1024).fill(0x77));
    const disk = await FileBackend.open(path);
    try {
      await disk.discard(512, 1024);
      await disk.writeZeroes(4096, 200 * 1024, true);
    } finally {
      await disk.close();
    }
    const bytes = await readFile(path);
    const zero = (from: number, to: number): boolean => bytes.subarray(from, to).every((b) => b === 0);
    const kept = (from: number, to: number): boolean => bytes.subarray(from, to).every((b) => b === 0x77);
    assert.ok(kept(0, 512) && zero(512, 1536) && kept(1536, 4096));
    assert.ok(zero(4096, 4096 + 200 * 1024) && kept(4096 + 200 * 1024, bytes.length));
  }));

test('a read-only image opens without write access', () =>
  withDir(async (dir) => {
    const path = join(dir, 'ro.img');
    await writeFile(path, pattern(1024, 2));
    await chmod(path, 0o444);
    const disk = await FileBackend.open(path, { readOnly: true });
    try {
      assert.equal(disk.readOnly, true);
      const out = new Uint8Array(1024);
      await disk.read(0, [out]);
      assert.deepEqual(out, pattern(1024, 2));
    } finally {
      await disk.close();
    }
  }));

/** Threads of this process now (each I/O thread is one). */
const osThreads = async (): Promise<number> => (await readdir('/proc/self/task')).length;

test('opening starts no I/O thread; prepare() starts the one the first transfer then uses', () =>
  withDir(async (dir) => {
    const path = join(dir, 'disk.img');
    await writeFile(path, pattern(8192, 4));
    const threads = new IoThreads(2);
    const disk = await FileBackend.open(path, { sharedThreads: threads, inline: false });
    try {
      assert.equal(threads.started, 0);
      disk.prepare();
      assert.equal(threads.running, 1, 'started before the first transfer is submitted');
      const out = new Uint8Array(4096);
      await disk.read(4096, [out]);
      assert.deepEqual(out, pattern(8192, 4).subarray(4096));
      assert.equal(threads.started, 1, 'the read went to the thread prepare() started');
    } finally {
      await disk.close();
      await threads.close();
    }
  }));

test('closing a prepared back-end that never did I/O leaves no thread behind', () =>
  withDir(async (dir) => {
    const path = join(dir, 'disk.img');
    await writeFile(path, new Uint8Array(4096));
    const before = await osThreads();
    const disk = await FileBackend.open(path);
    disk.prepare();
    assert.ok((await osThreads()) > before, 'its I/O thread runs');
    await disk.close();
    assert.equal(await osThreads(), before);
  }));

async function openError(path: string): Promise<DiskImageError> {
  try {
    await FileBackend.open(path);
  } catch (err) {
    assert.ok(err instanceof DiskImageError);
    return err;
  }
  assert.fail(`opening ${path} succeeded`);
}

test('an I/O thread count outside 1..64 is refused naming it', () =>
  withDir(async (dir) => {
    const path = join(dir, 'disk.img');
    await writeFile(path, new Uint8Array(512));
    await assert.rejects(FileBackend.open(path, { threads: 0 }), { message: 'I/O thread count 0 is not an integer from 1 to 64' });
  }));

test('unusable images are refused with one sentence naming the path', () =>
  withDir(async (dir) => {
    const missing = join(dir, 'missing.img');
    assert.equal((await openError(missing)).message, `disk image ${missing} does not exist`);
    assert.equal((await openError(dir)).message, `disk image ${dir} is a directory, not a file`);
    const file = join(dir, 'plain');
    await writeFile(file, '');
    const under = join(file, 'disk.img');
    assert.equal((await openError(under)).message, `disk image ${under} does not exist: part of its directory path is a file`);
    const odd = join(dir, 'odd.img');
    await writeFile(odd, new Uint8Array(1000));
    const err = await openError(odd);
    assert.equal(err.path, odd);
    assert.equal(err.message, `disk image ${odd} is 1000 bytes, not a whole number of 512-byte sectors`);
  }));
