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

test('view() lends the next bytes of one descriptor without a copy, and declines bytes that span two', () => {
  const c = chain([[1, 2], [], [3, 4, 5]], []);
  const reader = new ChainReader(c);
  const head = reader.view(2)!;
  assert.deepEqual([...head], [1, 2]);
  assert.equal(head.buffer, c.readable[0].buffer, 'a view of the driver buffer itself');
  assert.equal(reader.view(4), undefined, 'more than remains');
  const tail = reader.view(3)!;
  assert.deepEqual([...tail], [3, 4, 5], 'an empty descriptor in between is stepped over');
  assert.equal(reader.remaining, 0);
  const spanning = new ChainReader(chain([[1], [2]], []));
  assert.equal(spanning.view(2), undefined);
  assert.equal(spanning.remaining, 2, 'nothing consumed');
  assert.deepEqual([...spanning.readExact(2)!], [1, 2]);
});

test('a reader and a writer reset onto another chain start over on it', () => {
  const reader = new ChainReader();
  const writer = new ChainWriter();
  const a = chain([[1, 2, 3]], [2]);
  reader.reset(a);
  writer.reset(a);
  reader.skip(2);
  writer.write(Uint8Array.from([7]));
  const b = chain([[4, 5]], [3]);
  reader.reset(b);
  writer.reset(b);
  assert.deepEqual([...reader.readExact(2)!], [4, 5]);
  assert.equal(writer.written, 0);
  assert.equal(writer.write(Uint8Array.from([8, 9, 10, 11])), 3);
  assert.deepEqual([...b.writable[0]], [8, 9, 10]);
});

test('span() finds the next bytes of one descriptor in place, with their offset, and declines bytes that span two', () => {
  const memory = Uint8Array.from([0, 0, 1, 2, 3, 4, 5, 0]);
  const c = new DescriptorChain(0, 2, [memory.subarray(2, 4), memory.subarray(4, 7)], [], 5, 0);
  const reader = new ChainReader(c);
  assert.equal(reader.span(3), undefined, 'three bytes span two descriptors');
  assert.equal(reader.remaining, 5, 'nothing consumed');
  const head = reader.span(2)!;
  assert.equal(head.buffer, memory.buffer, 'the segment itself, no copy');
  assert.deepEqual([...head.subarray(reader.spanAt, reader.spanAt + 2)], [1, 2]);
  const frame = reader.span(3)!;
  assert.deepEqual([...frame.subarray(reader.spanAt, reader.spanAt + 3)], [3, 4, 5]);
  assert.equal(reader.remaining, 0);
  assert.equal(reader.span(1), undefined, 'nothing left');
  let live = true;
  const dead = new ChainReader(c, () => live);
  live = false;
  assert.equal(dead.span(2), undefined, 'nothing once the request died');
});
