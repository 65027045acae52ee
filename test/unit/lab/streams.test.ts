import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { readAll } from '../../lab/streams.ts';

/**
 * A byte source that, like a socket, gets its bytes from I/O: a 100-byte piece each time the
 * event loop polls (setImmediate). A reader that waits for 'readable' over and over without
 * letting the loop poll gets nothing new; after many such waits the source fails it instead of
 * letting the process spin for ever.
 */
class PolledSource extends Readable {
  private at = 0;
  private waitsWithoutIo = 0;

  constructor(private readonly data: Buffer) {
    super();
    this.schedule();
  }

  override _read(): void {}

  override on(...args: Parameters<Readable['on']>): this {
    if (args[0] === 'readable' && ++this.waitsWithoutIo > 1000) {
      throw new Error(`the reader waited for 'readable' 1000 times at ${this.at} bytes without letting I/O run`);
    }
    return super.on(...args);
  }

  private schedule(): void {
    setImmediate(() => {
      this.waitsWithoutIo = 0;
      this.push(this.data.subarray(this.at, this.at + 100));
      this.at += 100;
      if (this.at < this.data.length) this.schedule();
      else this.push(null);
    });
  }
}

test('a slow reader asking for more than is buffered takes what is there and lets I/O run, rather than spinning on readable', async () => {
  const data = randomBytes(10_000);
  // 16 KiB per turn from a source that has only 100 bytes at a time: the stall seen with 16 MiB vsock transfers.
  const got = await readAll(new PolledSource(data), { slowChunk: 16 * 1024 });
  assert.deepEqual(got, data);
});

test('readAll reads a stream to its end, fast or slow, and rejects on a stream destroyed before its end', async () => {
  const data = randomBytes(100_000);
  assert.deepEqual(await readAll(Readable.from([data.subarray(0, 5), data.subarray(5)])), data);
  assert.deepEqual(await readAll(new PolledSource(data), { slowChunk: 333 }), data);
  const broken = new Readable({ read() {} });
  broken.push(data.subarray(0, 10));
  setImmediate(() => broken.destroy());
  await assert.rejects(readAll(broken), /closed after 10 bytes, before its end/);
});
