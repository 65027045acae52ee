import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChainReader, ChainWriter } from '../../../src/virtio/chain-io.ts';
import { DescriptorChain } from '../../../src/virtio/queue.ts';

function chain(readable: number[][], writable: number[]): DescriptorChain {
  const r = readable.map((b) => Uint8Array.from(b));
  const w = writable.map((n) => new Uint8Array(n));
  return new DescriptorChain(0, r.length + w.length, r, w, r.reduce((n, b) => n + b.length, 0), w.reduce((n, b) => n + b.length, 0));
}

test('a reader crosses descriptor boundaries and stops at the end of the readable part', () => {
  const reader = new ChainReader(chain([[1, 2], [3], [4, 5, 6]], []));
  assert.deepEqual([...reader.readExact(4)!], [1, 2, 3, 4]);
  assert.equal(reader.readExact(3), undefined, 'only two bytes remain');
  assert.equal(reader.remaining, 2);
  const rest = new Uint8Array(5);
  assert.equal(reader.read(rest), 2);
  assert.deepEqual([...rest.subarray(0, 2)], [5, 6]);
});

test('a writer fills descriptors in order, counts what it wrote, and never writes past the chain', () => {
  const c = chain([], [2, 3]);
  const writer = new ChainWriter(c);
  assert.equal(writer.write(Uint8Array.from([1, 2, 3, 4, 5, 6, 7])), 5);
  assert.equal(writer.written, 5);
  assert.equal(writer.remaining, 0);
  assert.deepEqual([...c.writable[0], ...c.writable[1]], [1, 2, 3, 4, 5]);
  assert.deepEqual([...ChainWriter.tail(c, 2)!], [4, 5]);
  assert.equal(ChainWriter.tail(c, 4), undefined, 'the tail must lie in the last descriptor');
});

test('once the request is no longer live, reads return nothing and writes leave memory alone', () => {
  let live = true;
  const c = chain([[1, 2, 3]], [4]);
  const reader = new ChainReader(c, () => live);
  const writer = new ChainWriter(c, () => live);
  assert.deepEqual([...reader.readExact(1)!], [1]);
  live = false;
  assert.equal(reader.readExact(1), undefined);
  assert.equal(writer.write(Uint8Array.from([9, 9])), 0);
  assert.deepEqual(writer.segments(4), []);
  assert.deepEqual([...c.writable[0]], [0, 0, 0, 0]);
  assert.equal(writer.written, 0);
});
