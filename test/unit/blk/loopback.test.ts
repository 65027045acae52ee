import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { pino } from 'pino';
import { BlkDevice, type BlkDeviceOptions } from '../../../src/devices/blk/device.ts';
import { BLK_DRIVER_FEATURES, BlkDriver, BlkRequestError, type BlkDriverOptions, type BlkIo } from '../../../src/devices/blk/driver.ts';
import { FileBackend } from '../../../src/storage/file-backend.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { BlkFeature, BlkStatus } from '../../../src/devices/blk/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { Feature, featureBit, hasFeature } from '../../../src/virtio/constants.ts';
import type { DeviceContext } from '../../../src/virtio/device.ts';
import { QueueServer, type Request } from '../../../src/virtio/serve.ts';

const SECTORS = 256;
const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

/** Log lines the device wrote, as JSON text. */
const logged: string[] = [];
const log = pino({ level: 'warn' }, { write: (line: string) => void logged.push(line) });

async function connect(
  device: Partial<BlkDeviceOptions> = {},
  driver: BlkDriverOptions = {},
): Promise<{ disk: MemoryBackend; blk: BlkDriver; dev: BlkDevice }> {
  const disk = device.backend instanceof MemoryBackend ? device.backend : new MemoryBackend(SECTORS * 512);
  const dev = new BlkDevice({ backend: disk, serial: 'paravirt-disk-0', ...device });
  const { transport } = createLoopback(dev, { memoryBytes: 4 << 20, log });
  const blk = await BlkDriver.open(transport, driver);
  return { disk, blk, dev };
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`blk over mmio (${ring}): negotiation, capacity, serial, writes read back`, async () => {
    const { disk, blk } = await connect({}, { packed });
    try {
      assert.equal(hasFeature(blk.features, Feature.RING_PACKED), packed);
      assert.ok(hasFeature(blk.features, BlkFeature.FLUSH));
      assert.equal(blk.capacity, SECTORS);
      assert.equal(await blk.getId(), 'paravirt-disk-0');
      const data = pattern(4096, 7);
      await blk.write(10, data);
      assert.deepEqual(disk.bytes.subarray(10 * 512, 10 * 512 + 4096), data);
      assert.deepEqual(await blk.read(10, 4096), data);
      await blk.flush();
    } finally {
      await blk.close();
    }
  });

  test(`blk over mmio (${ring}): a random mix of requests in flight together matches a model`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant('write' as const), sector: fc.nat(SECTORS - 16), count: fc.integer({ min: 1, max: 16 }), seed: fc.nat(255) }),
            fc.record({ op: fc.constant('read' as const), sector: fc.nat(SECTORS - 16), count: fc.integer({ min: 1, max: 16 }) }),
            fc.record({ op: fc.constant('zero' as const), sector: fc.nat(SECTORS - 16), count: fc.integer({ min: 1, max: 16 }), unmap: fc.boolean() }),
            fc.record({ op: fc.constant('discard' as const), sector: fc.nat(SECTORS - 16), count: fc.integer({ min: 1, max: 16 }) }),
            fc.constant({ op: 'flush' as const }),
          ),
          { maxLength: 40 },
        ),
        fc.boolean(),
        async (ops, inOrder) => {
          const { disk, blk } = await connect(
            { queueSize: 16, maxDiscardSectors: 4, maxDiscardSeg: 2, features: { inOrder } },
            { packed },
          );
          assert.equal(hasFeature(blk.features, Feature.IN_ORDER), inOrder);
          const model = new Uint8Array(SECTORS * 512);
          try {
            // Each batch runs concurrently; batches run in order, so overlapping requests in one
            // batch never make the model ambiguous: a batch holds requests on disjoint sectors.
            const batches: (typeof ops)[] = [];
            let batch: typeof ops = [];
            const busy = new Set<number>();
            for (const op of ops) {
              const sectors = 'count' in op ? Array.from({ length: op.count }, (_, i) => op.sector + i) : [];
              if (sectors.some((s) => busy.has(s))) {
                batches.push(batch);
                batch = [];
                busy.clear();
              }
              sectors.forEach((s) => busy.add(s));
              batch.push(op);
            }
            batches.push(batch);
            for (const b of batches) {
              const expected = b.map((op) => (op.op === 'read' ? model.slice(op.sector * 512, (op.sector + op.count) * 512) : undefined));
              const results = await Promise.all(
                b.map((op) => {
                  switch (op.op) {
                    case 'write': {
                      const data = pattern(op.count * 512, op.seed);
                      model.set(data, op.sector * 512);
                      return blk.write(op.sector, data);
                    }
                    case 'read':
                      return blk.read(op.sector, op.count * 512);
                    case 'zero':
                      model.fill(0, op.sector * 512, (op.sector + op.count) * 512);
                      return blk.writeZeroes(op.sector, op.count, op.unmap);
                    case 'discard':
                      // Discarded contents are unspecified by the spec; this device zeroes them.
                      model.fill(0, op.sector * 512, (op.sector + op.count) * 512);
                      return blk.discard(op.sector, op.count);
                    case 'flush':
                      return blk.flush();
                  }
                }),
              );
              results.forEach((r, i) => {
                if (expected[i] !== undefined) assert.deepEqual(r, expected[i]);
              });
            }
            assert.deepEqual(disk.bytes, model);
          } finally {
            await blk.close();
          }
        },
      ),
      { numRuns: 25 },
    );
  });

  test(`blk over mmio (${ring}): multiqueue: requests spread over all four queues and complete correctly`, async () => {
    const { disk, blk, dev } = await connect({ queues: 4, queueSize: 8 }, { packed });
    try {
      assert.ok(hasFeature(blk.features, BlkFeature.MQ));
      assert.equal(blk.queues, 4);
      assert.equal(dev.numQueues, 4);
      const notified = new Set<number>();
      const queueNotify = dev.queueNotify.bind(dev);
      dev.queueNotify = (index) => {
        notified.add(index);
        queueNotify(index);
      };
      const writes = Array.from({ length: 64 }, (_, i) => blk.write(i * 4, pattern(2048, i)));
      await Promise.all(writes);
      for (let i = 0; i < 64; i++) assert.deepEqual(disk.bytes.subarray(i * 2048, (i + 1) * 2048), pattern(2048, i));
      const reads = await Promise.all(Array.from({ length: 64 }, (_, i) => blk.read(i * 4, 2048)));
      reads.forEach((r, i) => assert.deepEqual(r, pattern(2048, i)));
      assert.deepEqual([...notified].sort(), [0, 1, 2, 3], 'every queue carried requests');
    } finally {
      await blk.close();
    }
  });
}

test('a driver that does not negotiate MQ uses one queue of a multiqueue device', async () => {
  const { blk } = await connect({ queues: 3 }, { features: BLK_DRIVER_FEATURES & ~featureBit(BlkFeature.MQ) });
  try {
    assert.equal(hasFeature(blk.features, BlkFeature.MQ), false);
    assert.equal(blk.queues, 1);
    await blk.write(0, pattern(512, 1));
    assert.deepEqual(await blk.read(0, 512), pattern(512, 1));
  } finally {
    await blk.close();
  }
});

test('a read-only device offers RO, serves reads and answers writes with IOERR', async () => {
  const backing = pattern(SECTORS * 512, 3);
  const { disk, blk } = await connect({ backend: new MemoryBackend(backing.slice(), { readOnly: true }) });
  try {
    assert.ok(blk.readOnly);
    assert.equal(hasFeature(blk.features, BlkFeature.DISCARD), false);
    assert.deepEqual(await blk.read(1, 1024), backing.subarray(512, 1536));
    const err = await blk.write(0, new Uint8Array(512)).then(
      () => assert.fail('write succeeded'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof BlkRequestError);
    assert.equal(err.status, BlkStatus.IOERR);
    assert.equal(err.message, 'blk: write of 1 sector at sector 0 failed: IOERR (device or driver error) (the device is read-only)');
    assert.deepEqual(disk.bytes, backing);
  } finally {
    await blk.close();
  }
});

test('requests the device does not support fail with UNSUPP naming the request', async () => {
  const { blk } = await connect({ features: { flush: false, discard: false } });
  try {
    assert.equal(hasFeature(blk.features, BlkFeature.FLUSH), false);
    await assert.rejects(blk.flush(), (e: unknown) => e instanceof BlkRequestError && e.status === BlkStatus.UNSUPP && /blk: flush failed: UNSUPP/.test(e.message));
    await assert.rejects(blk.discard(0, 1), /discard of 1 sector at sector 0 failed: VIRTIO_BLK_F_DISCARD was not negotiated/);
  } finally {
    await blk.close();
  }
});

test('the driver refuses ranges past the capacity and partial sectors before submitting', async () => {
  const { blk } = await connect();
  try {
    await assert.rejects(blk.read(SECTORS - 1, 1024), /read of 2 sectors at sector 255 reaches past the capacity of 256 sectors/);
    await assert.rejects(blk.write(0, new Uint8Array(100)), /write of 100 bytes is not a multiple of 512/);
    await assert.rejects(blk.writeZeroes(-1, 1), /not a valid range/);
  } finally {
    await blk.close();
  }
});

test('transfers larger than seg_max × size_max are split into several requests', async () => {
  const { disk, blk } = await connect({ segMax: 2, sizeMax: 1024 });
  try {
    const data = pattern(64 * 512, 9);
    await blk.write(3, data);
    assert.deepEqual(disk.bytes.subarray(3 * 512, 67 * 512), data);
    assert.deepEqual(await blk.read(3, 64 * 512), data);
  } finally {
    await blk.close();
  }
});

test('CONFIG_WCE: the driver switches the cache mode through the writeback field', async () => {
  const { blk, dev } = await connect();
  try {
    assert.equal(blk.config.writeback, 1);
    await blk.setWriteback(false);
    assert.equal(blk.config.writeback, 0);
    assert.equal(dev.writeback, false);
    await blk.setWriteback(true);
    assert.equal(dev.writeback, true);
  } finally {
    await blk.close();
  }
});

test('write-zeroes and discard on a file backend read back as zeroes through the device', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'paravirt-blk-'));
  try {
    const path = join(dir, 'disk.img');
    await writeFile(path, new Uint8Array(SECTORS * 512).fill(0x42));
    const backend = await FileBackend.open(path);
    const dev = new BlkDevice({ backend });
    const { transport } = createLoopback(dev, { memoryBytes: 4 << 20 });
    const blk = await BlkDriver.open(transport);
    try {
      await blk.discard(8, 8);
      await blk.writeZeroes(32, 16, true);
      await blk.writeZeroes(64, 1);
      const all = await blk.read(0, SECTORS * 512);
      const zeroSectors = Array.from({ length: SECTORS }, (_, s) => all.subarray(s * 512, s * 512 + 512).every((b) => b === 0))
        .map((z, s) => (z ? s : -1))
        .filter((s) => s >= 0);
      assert.deepEqual(zeroSectors, [...Array.from({ length: 8 }, (_, i) => 8 + i), ...Array.from({ length: 16 }, (_, i) => 32 + i), 64]);
    } finally {
      await blk.close();
      await backend.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('requests that outgrow the DMA memory wait for others to finish; one that can never fit fails', async () => {
  const disk = new MemoryBackend(SECTORS * 512);
  const { transport } = createLoopback(new BlkDevice({ backend: disk }), { memoryBytes: 128 * 1024 });
  const blk = await BlkDriver.open(transport, { queueSize: 64, maxTransfer: 128 * 1024 });
  try {
    // 48 requests of 8 KiB: more than the memory left after the rings holds at once.
    await Promise.all(Array.from({ length: 48 }, (_, i) => blk.write((i * 16) % SECTORS, pattern(8192, i))));
    const reads = await Promise.all(Array.from({ length: 16 }, (_, i) => blk.read(i * 16, 8192)));
    reads.forEach((r, i) => assert.deepEqual(r, pattern(8192, i + 32)));
    await assert.rejects(blk.read(0, 128 * 1024), /DMA memory exhausted: no room for a request of 131089 bytes/);
  } finally {
    await blk.close();
  }
});

/** A BlkDevice whose every request is answered by `answer` instead of the real request logic. */
class ScriptedDevice extends BlkDevice {
  constructor(private readonly answer: (req: Request) => void) {
    super({ backend: new MemoryBackend(SECTORS * 512) });
  }

  override activate(ctx: DeviceContext): void {
    const server = new QueueServer(ctx, 0, this.answer);
    this.queueNotify = () => server.kick();
  }
}

test('the driver distrusts the status: unknown values and a missing status byte are errors', async () => {
  const cases: [(req: Request) => void, RegExp][] = [
    [(req) => void req.writer.write(new Uint8Array(req.writer.remaining).fill(9)), /read of 1 sector at sector 0 failed: unknown status 9/],
    [() => {}, /read of 1 sector at sector 0 failed: the device wrote no status/],
  ];
  for (const [answer, message] of cases) {
    const { transport } = createLoopback(new ScriptedDevice(answer), { memoryBytes: 1 << 20 });
    const blk = await BlkDriver.open(transport);
    try {
      await assert.rejects(blk.read(0, 512), (e: unknown) => e instanceof BlkRequestError && e.status === undefined && message.test(e.message));
    } finally {
      await blk.close();
    }
  }
});

test('a backend failure reaches the driver as IOERR naming the request', async () => {
  const backend = new MemoryBackend(SECTORS * 512);
  backend.transfer = (_op, _offset, _segments, done, tag) => done(tag, new Error('medium error'));
  const { blk } = await connect({ backend });
  try {
    logged.length = 0;
    await assert.rejects(blk.read(8, 1024), /^BlkRequestError: blk: read of 2 sectors at sector 8 failed: IOERR \(device or driver error\)$/);
    assert.equal(logged.length, 1);
    assert.match(logged[0], /"msg":"read failed; request answered IOERR"/);
    assert.match(logged[0], /medium error/);
  } finally {
    await blk.close();
  }
});

test('operations started with start() and kept by the caller read what was written, with polling on', async () => {
  const disk = new MemoryBackend(SECTORS * 512);
  const { transport } = createLoopback(new BlkDevice({ backend: disk }), { memoryBytes: 1 << 20 });
  const blk = await BlkDriver.open(transport, { pollMicros: 200, maxTransfer: 8192 });
  try {
    const run = (io: BlkIo): Promise<void> =>
      new Promise((resolve, reject) => {
        io.done = (err) => (err === undefined ? resolve() : reject(err));
        blk.start(io);
      });
    const io: BlkIo = { write: true, sector: 0, buffer: new Uint8Array(4096), done: () => {} };
    // One object, started again and again: eight writes, then eight reads into one buffer.
    for (let i = 0; i < 8; i++) {
      io.sector = i * 8;
      io.buffer = pattern(4096, i);
      await run(io);
    }
    io.write = false;
    io.buffer = new Uint8Array(4096);
    for (let i = 0; i < 8; i++) {
      io.sector = i * 8;
      await run(io);
      assert.deepEqual(io.buffer, pattern(4096, i));
    }
    io.sector = SECTORS;
    assert.throws(() => blk.start(io), /blk: read of 8 sectors at sector 256 reaches past the capacity of 256 sectors/);
    io.sector = 0;
    io.buffer = new Uint8Array(blk.transferLimit + 512);
    assert.throws(() => blk.start(io), /blk: a started read of \d+ bytes is beyond the \d+-byte transfer limit/);
  } finally {
    await blk.close();
  }
});
