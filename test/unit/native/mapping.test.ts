import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMemfd, truncate } from '../../../src/native/memfd.ts';
import { Mapping, PAGE_SIZE } from '../../../src/native/mapping.ts';
import { closeFd } from '../../../src/native/fd.ts';
import { SyscallError } from '../../../src/native/syscall-error.ts';

test('two mappings of one memfd see the same bytes', () => {
  const fd = createMemfd('shared', 2 * PAGE_SIZE);
  const a = Mapping.shared(fd, 2 * PAGE_SIZE);
  const b = Mapping.shared(fd, PAGE_SIZE, { offset: PAGE_SIZE });
  closeFd(fd); // the mappings keep the memory alive
  a.bytes.set([1, 2, 3], PAGE_SIZE + 10);
  assert.deepEqual([...b.bytes.subarray(10, 13)], [1, 2, 3]);
  b.bytes[0] = 0xaa;
  assert.equal(a.bytes[PAGE_SIZE], 0xaa);
  a.unmap();
  b.unmap();
});

test('after unmap the mapping refuses access and escaped views cannot reach the shared memory', () => {
  const fd = createMemfd('unmap', PAGE_SIZE);
  const a = Mapping.shared(fd, PAGE_SIZE);
  const b = Mapping.shared(fd, PAGE_SIZE);
  const escaped = a.bytes;
  a.unmap();
  assert.equal(a.mapped, false);
  assert.throws(() => a.bytes, /unmapped/);
  assert.throws(() => a.advise(0, PAGE_SIZE, 'dontneed'), /unmapped/);
  escaped[0] = 0x55; // lands on private scratch pages, not in the memfd
  assert.equal(b.bytes[0], 0);
  a.unmap(); // a second unmap is harmless
  b.unmap();
  closeFd(fd);
});

test('madvise REMOVE frees shared pages so every mapping reads zeros; DONTNEED keeps file contents', () => {
  const fd = createMemfd('advise', 2 * PAGE_SIZE);
  const a = Mapping.shared(fd, 2 * PAGE_SIZE);
  const b = Mapping.shared(fd, 2 * PAGE_SIZE);
  a.bytes.fill(7);
  a.advise(0, PAGE_SIZE, 'dontneed');
  assert.equal(a.bytes[0], 7, 'a shared mapping refaults from the file after DONTNEED');
  a.advise(PAGE_SIZE, PAGE_SIZE, 'remove');
  assert.equal(b.bytes[PAGE_SIZE], 0);
  assert.equal(b.bytes[0], 7);
  assert.throws(() => a.advise(1, PAGE_SIZE, 'remove'), RangeError);
  assert.throws(() => a.advise(0, 3 * PAGE_SIZE, 'remove'), RangeError);
  a.unmap();
  b.unmap();
  closeFd(fd);
});

test('mmap of a bad descriptor is a SyscallError naming mmap and EBADF', () => {
  assert.throws(
    () => Mapping.shared(999_999, PAGE_SIZE),
    (e: unknown) => {
      assert.ok(e instanceof SyscallError);
      assert.equal(e.syscall, 'mmap');
      assert.equal(e.code, 'EBADF');
      assert.equal(e.errno, 9);
      assert.match(e.message, /^mmap failed mapping 4096 bytes at offset 0 of fd 999999: Bad file descriptor \(EBADF\)$/);
      return true;
    },
  );
});

test('bad sizes and offsets are refused before any call', () => {
  assert.throws(() => Mapping.shared(0, 0), /mapping size 0/);
  assert.throws(() => Mapping.shared(0, PAGE_SIZE, { offset: 100 }), /offset 100/);
  assert.throws(() => createMemfd('x', -1), /file size -1/);
});

test('a mapping reaching past the end of its file is refused, since touching it would kill the process', () => {
  const fd = createMemfd('short', PAGE_SIZE);
  assert.throws(() => Mapping.shared(fd, 2 * PAGE_SIZE), new RegExp(`the file behind fd \\d+ has ${PAGE_SIZE} bytes, fewer than the mapping's end at ${2 * PAGE_SIZE}`));
  assert.throws(() => Mapping.shared(fd, PAGE_SIZE, { offset: PAGE_SIZE }), /fewer than the mapping's end/);
  closeFd(fd);
});

test('a memfd made with a fixed size cannot be shrunk or grown by anyone holding it, and stays readable', () => {
  const fd = createMemfd('fixed', 2 * PAGE_SIZE, { fixedSize: true });
  const m = Mapping.shared(fd, 2 * PAGE_SIZE);
  try {
    assert.throws(() => truncate(fd, PAGE_SIZE), (e: unknown) => e instanceof SyscallError && e.code === 'EPERM', 'shrinking is refused');
    assert.throws(() => truncate(fd, 0), (e: unknown) => e instanceof SyscallError && e.code === 'EPERM', 'emptying is refused');
    assert.throws(() => truncate(fd, 4 * PAGE_SIZE), (e: unknown) => e instanceof SyscallError && e.code === 'EPERM', 'growing is refused');
    m.bytes[2 * PAGE_SIZE - 1] = 7;
    assert.equal(m.bytes[2 * PAGE_SIZE - 1], 7, 'the last page is still there');
  } finally {
    m.unmap();
    closeFd(fd);
  }
  const loose = createMemfd('loose', PAGE_SIZE);
  truncate(loose, 0);
  closeFd(loose);
});
