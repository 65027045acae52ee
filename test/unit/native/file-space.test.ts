import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, openSync, closeSync, writeSync, fstatSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fdatasync, punchHole, seekData, seekHole, zeroRange } from '../../../src/native/file-space.ts';
import { SyscallError } from '../../../src/native/syscall-error.ts';

const MiB = 1024 * 1024;

function withFile(run: (fd: number) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-space-'));
  const fd = openSync(join(dir, 'disk.img'), 'w+');
  return run(fd).finally(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true });
  });
}

test('punching a hole frees the blocks, keeps the size and reads back zeros', () =>
  withFile(async (fd) => {
    writeSync(fd, Buffer.alloc(4 * MiB, 0xab), 0, 4 * MiB, 0);
    await fdatasync(fd);
    const before = fstatSync(fd);
    await punchHole(fd, MiB, 2 * MiB);
    const after = fstatSync(fd);
    assert.equal(after.size, 4 * MiB);
    assert.ok(after.blocks * 512 <= before.blocks * 512 - 2 * MiB, `blocks ${before.blocks} -> ${after.blocks}`);
    assert.equal(seekHole(fd, 0), MiB);
    assert.equal(seekData(fd, MiB), 3 * MiB);
    const back = Buffer.alloc(16);
    readSync(fd, back, 0, 16, 2 * MiB);
    assert.ok(back.every((b) => b === 0));
    readSync(fd, back, 0, 16, 3 * MiB);
    assert.ok(back.every((b) => b === 0xab));
  }));

test('zero range makes bytes read as zeros without changing the size', () =>
  withFile(async (fd) => {
    writeSync(fd, Buffer.alloc(MiB, 0x11), 0, MiB, 0);
    await zeroRange(fd, 4096, 8192);
    assert.equal(fstatSync(fd).size, MiB);
    const back = Buffer.alloc(8192 + 2);
    readSync(fd, back, 0, back.length, 4095);
    assert.equal(back[0], 0x11);
    assert.ok(back.subarray(1, 8193).every((b) => b === 0));
    assert.equal(back[8193], 0x11);
  }));

test('seeking past the end answers null and bad ranges are refused', () =>
  withFile(async (fd) => {
    writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0);
    assert.equal(seekData(fd, 0), 0);
    assert.equal(seekHole(fd, 0), 4096);
    assert.equal(seekData(fd, 8192), null);
    assert.throws(() => punchHole(fd, -1, 10), /hole punch range of 10 bytes at offset -1/);
    await assert.rejects(fdatasync(999_999), (e: unknown) => e instanceof SyscallError && e.code === 'EBADF');
  }));
