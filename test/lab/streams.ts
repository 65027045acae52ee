/**
 * Reading and writing whole Node streams in tests, with a deliberately slow reader for
 * back-pressure tests.
 *
 * A slow reader must take only what is buffered: `read(n)` with fewer than n bytes buffered
 * returns null, and a 'readable' listener added while bytes are buffered is called on the next
 * tick, before any I/O. A loop of the two never lets the event loop poll, so nothing more arrives
 * and the stream looks stalled (which is what a fixed 16 KiB read size did to a 16 MiB transfer).
 */
import { once } from 'node:events';
import type { Duplex, Readable } from 'node:stream';

export interface ReadAllOptions {
  /**
   * Take at most this many bytes per event-loop turn (a setImmediate between reads, so I/O runs
   * in between): a reader slower than the writer, for back-pressure tests. Default: everything
   * buffered at once.
   */
  readonly slowChunk?: number;
  /** With slowChunk: wait this many milliseconds between reads instead of one turn, a reader slower still. */
  readonly pauseMs?: number;
  /** Called with the byte count after each read (progress, or to sample a peer's counters). */
  readonly onRead?: (total: number) => void;
}

/** Everything `s` sends until its end; rejects if it errors or closes before the end. */
export async function readAll(s: Readable, options: ReadAllOptions = {}): Promise<Buffer> {
  const parts: Buffer[] = [];
  let total = 0;
  for (;;) {
    // With nothing buffered, read() asks the source for more and arms 'readable' (or 'end').
    const size = options.slowChunk !== undefined && s.readableLength > 0 ? Math.min(options.slowChunk, s.readableLength) : undefined;
    const c = s.read(size) as Buffer | null;
    if (c !== null) {
      parts.push(c);
      total += c.length;
      options.onRead?.(total);
      if (options.slowChunk !== undefined) {
        const pauseMs = options.pauseMs;
        await new Promise((r) => (pauseMs === undefined ? setImmediate(r) : setTimeout(r, pauseMs)));
      }
      continue;
    }
    if (s.readableEnded) return Buffer.concat(parts);
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error): void => {
        s.off('readable', wake);
        s.off('end', wake);
        s.off('error', done);
        s.off('close', closed);
        if (err === undefined) resolve();
        else reject(err);
      };
      const wake = (): void => done();
      const closed = (): void => done(s.readableEnded ? undefined : new Error(`readAll: the stream closed after ${total} bytes, before its end`));
      s.on('readable', wake);
      s.on('end', wake);
      s.on('error', done);
      s.on('close', closed);
    });
  }
}

/** Write `data` in `chunk`-byte writes, each waiting for 'drain' when the stream asks, then end it. */
export async function writeAll(s: Duplex, data: Uint8Array, chunk = 64 * 1024): Promise<void> {
  for (let at = 0; at < data.length; at += chunk) {
    if (!s.write(data.subarray(at, at + chunk))) await once(s, 'drain');
  }
  s.end();
}
