import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { requestHandler, type RequestTarget } from '../../../src/devices/blk/request.ts';
import { ChainReader, ChainWriter } from '../../../src/virtio/chain-io.ts';
import { LATER } from '../../../src/virtio/serve.ts';
import {
  BlkStatus,
  RangeFlag,
  RequestType,
  encodeRangeSegments,
  encodeRequestHeader,
  type RangeSegment,
} from '../../../src/devices/blk/wire.ts';
import type { DescriptorChain } from '../../../src/virtio/queue.ts';
import { chainOf, type Part } from './chains.ts';

const SECTORS = 64;

interface Harness {
  readonly backend: MemoryBackend;
  readonly target: RequestTarget;
  readonly flushes: { count: number };
  readonly failures: string[];
}

function harness(over: Partial<RequestTarget> = {}, backend = new MemoryBackend(SECTORS * 512)): Harness {
  const flushes = { count: 0 };
  const failures: string[] = [];
  const flush = backend.flush.bind(backend);
  backend.flush = () => {
    flushes.count++;
    return flush();
  };
  const target: RequestTarget = {
    backend,
    capacity: SECTORS,
    readOnly: false,
    id: new TextEncoder().encode('serial-0123456789abc').subarray(0, 20),
    maxDataBytes: Infinity,
    flush: true,
    discard: { maxSectors: 16, maxSegments: 2 },
    writeZeroes: { maxSectors: 16, maxSegments: 2 },
    writeZeroesMayUnmap: false,
    writethrough: () => false,
    backendFailed: (what) => failures.push(what),
    ...over,
  };
  return { backend, target, flushes, failures };
}

const header = (type: number, sector = 0): Uint8Array => encodeRequestHeader({ type, reserved: 0, sector });
const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

/** Serve one request as the queue server does; resolves once it finished. */
function serveRequest(req: { chain: DescriptorChain; reader: ChainReader; writer: ChainWriter }, target: RequestTarget): Promise<void> {
  return new Promise((resolve, reject) => {
    const result = requestHandler(target)({ ...req, finish: resolve });
    if (result instanceof Promise) result.then(resolve, reject);
    else if (result !== LATER) resolve();
  });
}

/** Run the request and return [status byte, used length, the chain]. */
async function run(h: Harness, parts: readonly Part[]): Promise<{ status: number; len: number; chain: DescriptorChain }> {
  const chain = chainOf(parts);
  const writer = new ChainWriter(chain);
  await serveRequest({ chain, reader: new ChainReader(chain), writer }, h.target);
  const last = chain.writable.filter((w) => w.length > 0).at(-1);
  return { status: last === undefined ? -1 : last[last.length - 1], len: writer.written, chain };
}

test('IN fills the data buffers from the disk; used length counts data and status', async () => {
  const h = harness();
  h.backend.bytes.set(pattern(1024, 3), 2 * 512);
  const r = await run(h, [{ bytes: header(RequestType.IN, 2) }, { bytes: 700, writable: true }, { bytes: 325, writable: true }]);
  assert.equal(r.status, BlkStatus.OK);
  assert.equal(r.len, 1025);
  const got = new Uint8Array([...r.chain.writable[0], ...r.chain.writable[1].subarray(0, 324)]);
  assert.deepEqual(got, pattern(1024, 3));
});

test('OUT stores the data wherever the descriptors split it, header and data sharing one', async () => {
  const h = harness();
  const data = pattern(1536, 9);
  const r = await run(h, [
    { bytes: new Uint8Array([...header(RequestType.OUT, 5), ...data.subarray(0, 100)]) },
    { bytes: data.subarray(100) },
    { bytes: 1, writable: true },
  ]);
  assert.equal(r.status, BlkStatus.OK);
  assert.equal(r.len, 1, 'only the status byte is written');
  assert.deepEqual(h.backend.bytes.subarray(5 * 512, 8 * 512), data);
});

test('writethrough makes each write durable before it completes; writeback does not', async () => {
  const through = harness({ writethrough: () => true });
  await run(through, [{ bytes: header(RequestType.OUT, 0) }, { bytes: 512 }, { bytes: 1, writable: true }]);
  assert.equal(through.flushes.count, 1);
  const back = harness();
  await run(back, [{ bytes: header(RequestType.OUT, 0) }, { bytes: 512 }, { bytes: 1, writable: true }]);
  assert.equal(back.flushes.count, 0);
});

test('FLUSH flushes the backend; without FLUSH negotiated it is UNSUPP', async () => {
  const h = harness();
  assert.equal((await run(h, [{ bytes: header(RequestType.FLUSH) }, { bytes: 1, writable: true }])).status, BlkStatus.OK);
  assert.equal(h.flushes.count, 1);
  const off = harness({ flush: false });
  assert.equal((await run(off, [{ bytes: header(RequestType.FLUSH) }, { bytes: 1, writable: true }])).status, BlkStatus.UNSUPP);
  assert.equal(off.flushes.count, 0);
});

test('GET_ID answers the 20-byte serial, or as much as fits, zero-padding a longer buffer', async () => {
  const h = harness();
  const r = await run(h, [{ bytes: header(RequestType.GET_ID) }, { bytes: 21, writable: true }]);
  assert.equal(r.status, BlkStatus.OK);
  assert.equal(r.len, 21);
  assert.equal(new TextDecoder().decode(r.chain.writable[0].subarray(0, 20)), 'serial-0123456789abc');
  const long = await run(h, [{ bytes: header(RequestType.GET_ID) }, { bytes: new Uint8Array(40).fill(0xcc), writable: true }]);
  assert.equal(long.len, 40);
  assert.ok(long.chain.writable[0].subarray(20, 39).every((b) => b === 0));
  const short = await run(h, [{ bytes: header(RequestType.GET_ID) }, { bytes: 8, writable: true }]);
  assert.equal(short.len, 8);
  assert.equal(new TextDecoder().decode(short.chain.writable[0].subarray(0, 7)), 'serial-');
});

const ranges = (type: number, segs: RangeSegment[]): Part[] => [
  { bytes: new Uint8Array([...header(type), ...encodeRangeSegments(segs)]) },
  { bytes: 1, writable: true },
];

test('DISCARD and WRITE_ZEROES zero every segment and leave the rest', async () => {
  for (const type of [RequestType.DISCARD, RequestType.WRITE_ZEROES]) {
    const h = harness();
    h.backend.bytes.fill(0xee);
    const flags = type === RequestType.WRITE_ZEROES ? RangeFlag.UNMAP : 0;
    const r = await run(h, ranges(type, [{ sector: 1, numSectors: 2, flags }, { sector: 10, numSectors: 1, flags: 0 }]));
    assert.equal(r.status, BlkStatus.OK);
    const zeroed = (s: number): boolean => h.backend.bytes.subarray(s * 512, s * 512 + 512).every((b) => b === 0);
    assert.deepEqual([0, 1, 2, 3, 9, 10, 11].map(zeroed), [false, true, true, false, false, true, false]);
  }
});

test('a range request with a failing segment completes only after its other segments ended, then IOERR', async () => {
  for (const type of [RequestType.DISCARD, RequestType.WRITE_ZEROES]) {
    const h = harness();
    let endSecond = (): void => {};
    const fail = (): Promise<void> => Promise.reject(new Error('medium error'));
    const slow = (): Promise<void> => new Promise<void>((resolve) => (endSecond = resolve));
    let call = 0;
    const segmentCall = (): Promise<void> => (call++ === 0 ? fail() : slow());
    h.backend.discard = segmentCall;
    h.backend.writeZeroes = segmentCall;
    let answered = false;
    const served = run(h, ranges(type, [{ sector: 1, numSectors: 1, flags: 0 }, { sector: 10, numSectors: 1, flags: 0 }])).then((r) => {
      answered = true;
      return r;
    });
    // Let the first segment's failure propagate as far as it would.
    for (let i = 0; i < 20; i++) await new Promise<void>((resolve) => setImmediate(resolve));
    assert.equal(call, 2);
    assert.equal(answered, false, 'answered while a segment was still running');
    endSecond();
    const r = await served;
    assert.equal(r.status, BlkStatus.IOERR);
    assert.deepEqual(h.failures, [type === RequestType.DISCARD ? 'discard' : 'write zeroes']);
  }
});

test('DISCARD or WRITE_ZEROES not negotiated is UNSUPP', async () => {
  const h = harness({ discard: undefined, writeZeroes: undefined });
  for (const type of [RequestType.DISCARD, RequestType.WRITE_ZEROES]) {
    assert.equal((await run(h, ranges(type, [{ sector: 0, numSectors: 1, flags: 0 }]))).status, BlkStatus.UNSUPP);
  }
});

test('range requests: reserved flags and unmap on discard are UNSUPP; bad counts and ranges IOERR', async () => {
  const cases: [number, RangeSegment[] | Uint8Array, number][] = [
    [RequestType.DISCARD, [{ sector: 0, numSectors: 1, flags: RangeFlag.UNMAP }], BlkStatus.UNSUPP],
    [RequestType.WRITE_ZEROES, [{ sector: 0, numSectors: 1, flags: 2 }], BlkStatus.UNSUPP],
    [RequestType.DISCARD, [], BlkStatus.IOERR],
    [RequestType.DISCARD, new Uint8Array(15), BlkStatus.IOERR],
    [RequestType.DISCARD, new Array(3).fill({ sector: 0, numSectors: 1, flags: 0 }), BlkStatus.IOERR],
    [RequestType.WRITE_ZEROES, [{ sector: 0, numSectors: 17, flags: 0 }], BlkStatus.IOERR],
    [RequestType.WRITE_ZEROES, [{ sector: SECTORS - 1, numSectors: 2, flags: 0 }], BlkStatus.IOERR],
    [RequestType.DISCARD, Uint8Array.of(...new Array(8).fill(0xff), 2, 0, 0, 0, 0, 0, 0, 0), BlkStatus.IOERR],
  ];
  for (const [type, segs, status] of cases) {
    const h = harness();
    h.backend.bytes.fill(0xee);
    const payload = segs instanceof Uint8Array ? segs : encodeRangeSegments(segs);
    const r = await run(h, [{ bytes: new Uint8Array([...header(type), ...payload]) }, { bytes: 1, writable: true }]);
    assert.equal(r.status, status, `${type} ${JSON.stringify(segs)}`);
    assert.ok(h.backend.bytes.every((b) => b === 0xee), 'nothing was zeroed');
  }
});

test('a read-only disk refuses OUT, DISCARD and WRITE_ZEROES with IOERR and writes nothing', async () => {
  const h = harness({ readOnly: true });
  const out = await run(h, [{ bytes: header(RequestType.OUT, 0) }, { bytes: pattern(512, 1) }, { bytes: 1, writable: true }]);
  assert.equal(out.status, BlkStatus.IOERR);
  for (const type of [RequestType.DISCARD, RequestType.WRITE_ZEROES]) {
    assert.equal((await run(h, ranges(type, [{ sector: 0, numSectors: 1, flags: 0 }]))).status, BlkStatus.IOERR);
  }
  assert.ok(h.backend.bytes.every((b) => b === 0));
  assert.equal((await run(h, [{ bytes: header(RequestType.IN, 0) }, { bytes: 513, writable: true }])).status, BlkStatus.OK);
});

test('malformed requests answer IOERR, leave the disk alone and zero what precedes the status byte', async () => {
  const cases: [string, Part[]][] = [
    ['header shorter than 16 bytes', [{ bytes: header(RequestType.OUT).subarray(0, 15) }, { bytes: 1, writable: true }]],
    ['no readable part', [{ bytes: 513, writable: true }]],
    ['IN data not a multiple of 512', [{ bytes: header(RequestType.IN) }, { bytes: 500, writable: true }]],
    ['OUT data not a multiple of 512', [{ bytes: header(RequestType.OUT) }, { bytes: 511 }, { bytes: 1, writable: true }]],
    ['IN past the end', [{ bytes: header(RequestType.IN, SECTORS) }, { bytes: 513, writable: true }]],
    ['OUT straddling the end', [{ bytes: header(RequestType.OUT, SECTORS - 1) }, { bytes: 1024 }, { bytes: 1, writable: true }]],
    ['IN at sector 2^64-1', [{ bytes: new Uint8Array(16).fill(0xff, 8) }, { bytes: 513, writable: true }]],
  ];
  for (const [what, parts] of cases) {
    const h = harness();
    h.backend.bytes.fill(0x5a);
    const r = await run(h, parts.map((p) => (p.writable ? { bytes: new Uint8Array(Number(p.bytes)).fill(0xcc), writable: true } : p)));
    assert.equal(r.status, BlkStatus.IOERR, what);
    assert.equal(r.len, r.chain.writableLength, `${what}: used length covers the writable part`);
    assert.ok(h.backend.bytes.every((b) => b === 0x5a), `${what}: disk untouched`);
    const data = r.chain.writable[0].subarray(0, r.chain.writableLength - 1);
    assert.ok(data.every((b) => b === 0), `${what}: no disk data, only zeroes`);
  }
});

test('a request with no room for a status byte is not performed and completes with length 0', async () => {
  const h = harness();
  const noWritable = await run(h, [{ bytes: header(RequestType.OUT, 0) }, { bytes: pattern(512, 2) }]);
  assert.equal(noWritable.len, 0);
  const emptyWritable = await run(h, [{ bytes: header(RequestType.FLUSH) }, { bytes: 0, writable: true }]);
  assert.equal(emptyWritable.len, 0);
  assert.ok(h.backend.bytes.every((b) => b === 0));
  assert.equal(h.flushes.count, 0);
});

test('unknown and unoffered request types are UNSUPP', async () => {
  const h = harness();
  for (const type of [RequestType.GET_LIFETIME, RequestType.SECURE_ERASE, 2, 5, 16, 0xffff_ffff]) {
    assert.equal((await run(h, [{ bytes: header(type) }, { bytes: 64, writable: true }])).status, BlkStatus.UNSUPP, `type ${type}`);
  }
});

test('a data transfer larger than seg_max × size_max is IOERR', async () => {
  const h = harness({ maxDataBytes: 1024 });
  assert.equal((await run(h, [{ bytes: header(RequestType.IN) }, { bytes: 1537, writable: true }])).status, BlkStatus.IOERR);
  assert.equal((await run(h, [{ bytes: header(RequestType.IN) }, { bytes: 1025, writable: true }])).status, BlkStatus.OK);
});

test('a failing backend answers IOERR and reports what failed', async () => {
  const h = harness();
  h.backend.transfer = (_op, _offset, _segs, done, tag) => done(tag, new Error('medium error'));
  const r = await run(h, [{ bytes: header(RequestType.IN) }, { bytes: 513, writable: true }]);
  assert.equal(r.status, BlkStatus.IOERR);
  assert.equal(r.len, 513);
  assert.deepEqual(h.failures, ['read']);
});

test('any bytes in any chain shape are answered without throwing', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ bytes: fc.uint8Array({ maxLength: 40 }), writable: fc.boolean() }), { minLength: 1, maxLength: 5 }),
      fc.integer({ min: 0, max: 14 }),
      async (parts, type) => {
        const sorted = [...parts.filter((p) => !p.writable), ...parts.filter((p) => p.writable)];
        if (sorted[0] !== undefined && !sorted[0].writable && sorted[0].bytes.length >= 4) {
          new DataView(sorted[0].bytes.buffer, sorted[0].bytes.byteOffset).setUint32(0, type, true);
        }
        const h = harness();
        const r = await run(h, sorted);
        const writable = sorted.filter((p) => p.writable).reduce((n, p) => n + p.bytes.length, 0);
        assert.ok(r.len <= writable);
      },
    ),
  );
});

test('a request whose device was reset while in flight writes no status byte', async () => {
  const h = harness();
  let finishRead = (): void => {};
  h.backend.transfer = (_op, _offset, _segs, done, tag) => (finishRead = () => done(tag, undefined));
  const chain = chainOf([{ bytes: header(RequestType.IN) }, { bytes: new Uint8Array(513).fill(0xcc), writable: true }]);
  let live = true;
  const writer = new ChainWriter(chain, () => live);
  const served = serveRequest({ chain, reader: new ChainReader(chain, () => live), writer }, h.target);
  live = false;
  finishRead();
  await served;
  assert.equal(chain.writable[0][512], 0xcc);
});
