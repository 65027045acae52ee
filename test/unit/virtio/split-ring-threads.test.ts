/**
 * The split ring across two threads sharing memory, as with a real guest: the driver here, an
 * echo device in a worker. Both sides sleep whenever they have nothing to do and rely only on the
 * notifications the ring asks for, so a lost notification or a torn ring update shows up as a
 * hang (caught by the test timeout) or as wrong data.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import type { QueueConfig, Segment } from '../../../src/virtio/queue.ts';
import { SplitDriverQueue, placeSplitRing } from '../../../src/virtio/split-ring.ts';
import { DATA, Doorbell, MEMORY_BYTES, RING, concat, ring, type EchoDeviceData } from './split-ring-fixture.ts';

const SIZE = 16;
const REQUESTS = 500;
const TABLES = 0x20000;
/** Each request slot: readable bytes in the first half, writable in the second. */
const HALF = 256;

/** Atomics.waitAsync (ES2024, in Node since 16), which the project's ES2023 library lacks. */
interface WaitAsync {
  waitAsync(array: Int32Array, index: number, value: number): { async: boolean; value: Promise<string> | string };
}
const atomics = Atomics as unknown as WaitAsync;

/** A small deterministic generator, so a failure reproduces. */
function lcg(seed: number): (n: number) => number {
  let x = seed >>> 0;
  return (n) => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x % n;
  };
}

/** Split `total` bytes from `addr` into 1..3 segments. */
function segments(addr: number, total: number, random: (n: number) => number): Segment[] {
  const count = 1 + random(3);
  const segs: Segment[] = [];
  let left = total;
  for (let i = 0; i < count; i++) {
    const len = i === count - 1 ? left : random(left + 1);
    segs.push({ addr, len });
    addr += len;
    left -= len;
  }
  return segs;
}

/**
 * Start the echo device in a worker. Workers do not inherit the TypeScript loader, so the
 * worker imports the device module through tsx's API.
 */
function startDevice(data: EchoDeviceData): Worker {
  const api = JSON.stringify(import.meta.resolve('tsx/esm/api'));
  const device = JSON.stringify(new URL('./split-ring-echo-device.ts', import.meta.url).href);
  const parent = JSON.stringify(import.meta.url);
  return new Worker(`import(${api}).then((tsx) => tsx.tsImport(${device}, ${parent}))`, { eval: true, workerData: data });
}

async function echo(features: Pick<QueueConfig, 'eventIdx' | 'indirect' | 'inOrder'>): Promise<void> {
  const shared = new SharedArrayBuffer(MEMORY_BYTES);
  const memory = new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(shared) }]);
  const config: QueueConfig = { ...placeSplitRing(RING, SIZE), size: SIZE, ...features };
  const drv = new SplitDriverQueue<number>(memory, config, 'echo', {
    indirectTables: { addr: TABLES, maxSegments: 6 },
  });
  const doorbells = new Int32Array(new SharedArrayBuffer(3 * 4));
  const worker = startDevice({ memory: shared, doorbells: doorbells.buffer as SharedArrayBuffer, config });
  // The driver sleeps with waitAsync so that this thread's event loop still hears the worker;
  // `finished` rejects if the worker fails, and is observed at every sleep and at the end.
  const finished = once(worker, 'message');
  finished.catch(() => {});
  try {
    const random = lcg(0x5eed);
    const freeSlots = Array.from({ length: SIZE }, (_, i) => i);
    const inFlight = new Map<number, { slot: number; sent: Uint8Array; inSegs: Segment[] }>();
    let next = 0;
    let done = 0;
    while (done < REQUESTS) {
      while (next < REQUESTS && freeSlots.length > 0) {
        const slot = freeSlots[freeSlots.length - 1];
        const base = DATA + slot * 2 * HALF;
        const sent = Uint8Array.from({ length: 1 + random(HALF) }, () => random(256));
        memory.write(base, sent);
        const inSegs = segments(base + HALF, random(HALF + 1), random);
        if (!drv.add(segments(base, sent.length, random), inSegs, next)) break;
        freeSlots.pop();
        inFlight.set(next++, { slot, sent, inSegs });
      }
      if (drv.kick()) ring(doorbells, Doorbell.KICK);

      const seen = Atomics.load(doorbells, Doorbell.INTERRUPT);
      let collected = 0;
      for (let used = drv.getUsed(); used !== null; used = drv.getUsed()) {
        const request = inFlight.get(used.token);
        assert.ok(request, `token ${used.token} came back twice`);
        const expected = Math.min(request.sent.length, request.inSegs.reduce((n, s) => n + s.len, 0));
        assert.equal(used.len, expected);
        const echoed = concat(request.inSegs.map((s) => memory.slice(s.addr, s.len)));
        assert.deepEqual(echoed.subarray(0, expected), request.sent.subarray(0, expected));
        inFlight.delete(used.token);
        freeSlots.push(request.slot);
        collected++;
        done++;
      }
      if (collected > 0) continue;
      // Nothing came back: ask for an interrupt, look once more (§2.7.14), then sleep.
      if (drv.enableInterrupts()) continue;
      const wait = atomics.waitAsync(doorbells, Doorbell.INTERRUPT, seen);
      if (wait.async) await Promise.race([wait.value, finished]);
      drv.disableInterrupts();
    }
    Atomics.store(doorbells, Doorbell.STOP, 1);
    ring(doorbells, Doorbell.KICK);
    const [report] = (await finished) as [{ inFlight: number }];
    assert.equal(report.inFlight, 0);
  } finally {
    await worker.terminate();
  }
}

for (const eventIdx of [false, true]) {
  for (const indirect of [false, true]) {
    for (const inOrder of [false, true]) {
      test(
        `threads: ${REQUESTS} echoed requests with sleeping sides (eventIdx=${eventIdx} indirect=${indirect} inOrder=${inOrder})`,
        { timeout: 60_000 },
        () => echo({ eventIdx, indirect, inOrder }),
      );
    }
  }
}
