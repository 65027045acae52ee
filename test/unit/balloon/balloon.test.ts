import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { closeSync, fstatSync, writeSync } from 'node:fs';
import { BalloonDevice, BalloonTargetError, MAX_PFNS_PER_BUFFER } from '../../../src/devices/balloon/device.ts';
import { BalloonDriver, PageRange } from '../../../src/devices/balloon/driver.ts';
import { BALLOON_PAGE_SIZE, BalloonFeature, StatTag, encodePfns, encodeStats } from '../../../src/devices/balloon/wire.ts';
import { createMemfd } from '../../../src/native/memfd.ts';
import { mapRegion } from '../../../src/transports/vhost-user/backend-ports.ts';
import { createLoopback, type Loopback } from '../../../src/transports/mmio/loopback.ts';
import { featureBit, hasFeature } from '../../../src/virtio/constants.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { DescriptorChain } from '../../../src/virtio/queue.ts';
import { ScriptQueue, context } from '../virtio/framework-fixture.ts';

const MiB = 1024 * 1024;
const PAGE = BALLOON_PAGE_SIZE;
/** Guest RAM of the loopback: rings and buffers in the first 8 MiB, balloon pages above. */
const RAM = 16 * MiB;
const POOL_BASE = 8 * MiB;
const POOL_PAGES = (RAM - POOL_BASE) / PAGE;

async function untilActual(device: BalloonDevice, pages: number): Promise<void> {
  while (device.status().actualBytes !== pages * PAGE) await once(device, 'actual');
}

async function setUp(options: { statsIntervalMs?: number; refuse?: bigint; stats?: () => { tag: number; value: number }[] } = {}): Promise<{
  device: BalloonDevice;
  loop: Loopback;
  driver: BalloonDriver;
  pool: PageRange;
}> {
  const device = new BalloonDevice({ statsIntervalMs: options.statsIntervalMs });
  const loop = createLoopback(device, { memoryBytes: RAM });
  const pool = new PageRange(POOL_BASE, POOL_PAGES);
  const driver = await BalloonDriver.open(loop.transport, { pages: pool, stats: options.stats, refuse: options.refuse });
  return { device, loop, driver, pool };
}

test('balloon: the driver follows the target up and down, actual follows, inflated pages read as zeros', async () => {
  const { device, loop, driver, pool } = await setUp();
  loop.memory.slice(POOL_BASE, RAM - POOL_BASE).fill(0xaa);
  device.setTarget(4 * MiB);
  await untilActual(device, 1024);
  assert.equal(driver.size, 1024);
  assert.equal(pool.available, POOL_PAGES - 1024);
  assert.equal(device.status().inflatedBytes, 4 * MiB);
  // The pages the balloon took (the bottom of the pool) were released: they read as zeros.
  assert.ok(loop.memory.slice(POOL_BASE, 4 * MiB).every((b) => b === 0), 'inflated pages are zero');
  assert.ok(loop.memory.slice(POOL_BASE + 4 * MiB, MiB).every((b) => b === 0xaa), 'other pages are untouched');

  device.setTarget(1 * MiB);
  await untilActual(device, 256);
  assert.equal(driver.size, 256);
  assert.equal(device.status().inflatedBytes, MiB);
  assert.equal(device.counters.snapshot().device.deflatedPages, 768);
  await driver.close();
});

test('balloon: a target above guest RAM, negative or fractional is refused with one sentence', async () => {
  const { device, driver } = await setUp();
  assert.throws(() => device.setTarget(RAM + PAGE), (e: Error) => e instanceof BalloonTargetError && /exceeds the guest's 16777216 bytes of RAM\.$/.test(e.message));
  assert.throws(() => device.setTarget(-1), BalloonTargetError);
  assert.throws(() => device.setTarget(1.5), BalloonTargetError);
  assert.equal(device.status().targetBytes, 0);
  await driver.close();
  assert.throws(() => new BalloonDevice().setTarget(MiB), /before a guest driver has started/);
});

test('balloon: statistics reach the host with names and units, and fresh ones on each request', async () => {
  let free = 1000 * PAGE;
  const { device, driver } = await setUp({ stats: () => [{ tag: StatTag.MEMFREE, value: free }, { tag: StatTag.MEMTOT, value: RAM }, { tag: 99, value: 7 }] });
  const first = device.stats ?? (await once(device, 'stats'))[0];
  assert.deepEqual(first.values['free-memory'], { value: 1000 * PAGE, unit: 'bytes' });
  assert.deepEqual(first.values['total-memory'], { value: RAM, unit: 'bytes' });
  assert.equal(Object.keys(first.values).length, 2, 'an unknown tag is ignored');
  free = 500 * PAGE;
  const next = once(device, 'stats');
  assert.equal(device.requestStats(), true);
  assert.equal((await next)[0].values['free-memory'].value, 500 * PAGE);
  assert.equal(device.counters.snapshot().device.statsUnknownTags, 2);
  // A transport stopping the stats queue gets the held buffer back unused: available again, not used.
  device.queueStopping(2);
  assert.equal(device.requestStats(), false, 'no buffer is held any more');
  assert.equal(device.counters.snapshot().queues[2].requests, 1);
  // The queue runs again: the same buffer is taken again, with the statistics it holds.
  const again = once(device, 'stats');
  device.queueNotify(2);
  assert.equal((await again)[0].values['free-memory'].value, 500 * PAGE);
  assert.equal(device.requestStats(), true);
  await driver.close();
});

test('balloon: reported free pages are released without a target change', async () => {
  const { device, loop, driver } = await setUp();
  loop.memory.slice(POOL_BASE, 2 * MiB).fill(0x55);
  await driver.reportFree([{ addr: POOL_BASE, len: 2 * MiB }]);
  assert.ok(loop.memory.slice(POOL_BASE, 2 * MiB).every((b) => b === 0));
  assert.equal(device.counters.snapshot().device.reportedBytes, 2 * MiB);
  assert.equal(device.status().targetBytes, 0);
  await driver.close();
});

test('balloon: with PAGE_POISON and a non-zero poison value, reported pages keep their contents', async () => {
  const device = new BalloonDevice();
  const loop = createLoopback(device, { memoryBytes: RAM });
  const driver = await BalloonDriver.open(loop.transport, { pages: new PageRange(POOL_BASE, POOL_PAGES), poisonValue: 0xaaaaaaaa });
  assert.equal(hasFeature(driver.core.features, BalloonFeature.PAGE_POISON), true);
  loop.memory.slice(POOL_BASE, MiB).fill(0xaa);
  await driver.reportFree([{ addr: POOL_BASE, len: MiB }]);
  assert.ok(loop.memory.slice(POOL_BASE, MiB).every((b) => b === 0xaa), 'the poison pattern is still there');
  const c = device.counters.snapshot().device;
  assert.equal(c.reportedKeptForPoison, MiB);
  assert.equal(c.reportedBytes, 0);
  await driver.close();
});

test('balloon: DEFLATE_ON_OOM lets the owner take pages back below the target', async () => {
  const { device, driver, pool } = await setUp();
  device.setTarget(MiB);
  await untilActual(device, 256);
  assert.equal(await driver.reclaim(100), 100);
  assert.equal(pool.available, POOL_PAGES - 156);
  assert.equal(device.status().actualBytes, 156 * PAGE);
  await driver.close();
  const refused = await setUp({ refuse: featureBit(BalloonFeature.DEFLATE_ON_OOM) });
  refused.device.setTarget(MiB);
  await untilActual(refused.device, 256);
  assert.equal(await refused.driver.reclaim(100), 0, 'without the feature the balloon keeps its pages');
  await refused.driver.close();
});

test('balloon: hostile page numbers: outside guest RAM, duplicated, partial, beyond the target', async () => {
  const { device, loop, driver } = await setUp();
  const inflateq = driver.core.queue(0);
  const send = async (bytes: Uint8Array): Promise<void> => {
    const addr = loop.transport.dma.alloc(bytes.length, 4)!;
    loop.memory.write(addr, bytes);
    await inflateq.submit([{ addr, len: bytes.length }], []);
    loop.transport.dma.free(addr);
  };
  const base = POOL_BASE / PAGE;
  // Outside RAM: the page past the end, and one whose address needs more than 32 bits of bytes.
  await send(encodePfns([RAM / PAGE, 0xffffffff, base]));
  // Duplicates within a buffer and across buffers.
  await send(encodePfns([base + 1, base + 1, base]));
  // A partial page number at the end: 3 stray bytes.
  const partial = new Uint8Array(4 + 3);
  partial.set(encodePfns([base + 2]));
  await send(partial);
  const c = device.counters.snapshot().device;
  assert.equal(c.pfnsOutsideRam, 2);
  assert.equal(c.pfnsDuplicate, 2);
  assert.equal(c.partialPfnBuffers, 1);
  assert.equal(c.inflatedPages, 3, 'each page released and counted once');
  assert.equal(c.pagesBeyondTarget, 3, 'the target is 0: every page is beyond it, and accepted');
  assert.equal(device.status().inflatedBytes, 3 * PAGE);
  // Deflating a page never inflated is counted, not believed.
  const deflate = encodePfns([base + 100, base]);
  const addr = loop.transport.dma.alloc(deflate.length, 4)!;
  loop.memory.write(addr, deflate);
  await driver.core.queue(1).submit([{ addr, len: deflate.length }], []);
  assert.equal(device.counters.snapshot().device.pfnsNotInflated, 1);
  assert.equal(device.status().inflatedBytes, 2 * PAGE);
  assert.equal(device.status().actualBytes, 0, 'actual is what the driver writes, not what the device counts');
  await driver.close();
});

test('balloon: a buffer of more page numbers than one buffer may carry is served up to the bound', async () => {
  const { device, loop, driver } = await setUp();
  const count = MAX_PFNS_PER_BUFFER + 5;
  const bytes = new Uint8Array(count * 4).fill(0xff); // all outside RAM
  const addr = loop.transport.dma.alloc(bytes.length, 4);
  assert.notEqual(addr, undefined);
  loop.memory.write(addr!, bytes);
  await driver.core.queue(0).submit([{ addr: addr!, len: bytes.length }], []);
  const c = device.counters.snapshot().device;
  assert.equal(c.pfnsOutsideRam, MAX_PFNS_PER_BUFFER);
  assert.equal(c.pfnsIgnored, 5);
  await driver.close();
});

test('GuestMemory.discard: a range outside one region is refused; without a hook it zero-fills', () => {
  const memory = GuestMemory.allocate(4 * PAGE);
  memory.slice(0, 4 * PAGE).fill(1);
  memory.discard(PAGE, PAGE);
  assert.ok(memory.slice(PAGE, PAGE).every((b) => b === 0));
  assert.ok(memory.slice(0, PAGE).every((b) => b === 1));
  assert.throws(() => memory.discard(3 * PAGE, 2 * PAGE), /outside every region/);
  assert.equal(memory.addressOf(memory.slice(2 * PAGE, 8)), 2 * PAGE);
  assert.equal(memory.addressOf(new Uint8Array(8)), undefined);
});

test('vhost-user mapping discard: the shared memory file really gives its blocks back', () => {
  const size = 4 * MiB;
  const fd = createMemfd('balloon-test', size);
  try {
    // A region that starts 3 pages into the file: the mapping's head is not the region's start.
    const region = mapRegion(fd, 3 * PAGE, size - 3 * PAGE);
    region.bytes.fill(7);
    const touched = fstatSync(fd).blocks * 512;
    assert.ok(touched >= size - 3 * PAGE, `the file holds ${touched} bytes after every page was written`);
    region.discard!(MiB, 2 * MiB);
    const after = fstatSync(fd).blocks * 512;
    assert.equal(touched - after, 2 * MiB, 'two MiB of the file were released');
    assert.ok(region.bytes.subarray(MiB, 3 * MiB).every((b) => b === 0));
    assert.equal(region.bytes[MiB - 1], 7);
    assert.equal(region.bytes[3 * MiB], 7);
    // An unaligned range inside one page is zeroed, not released.
    region.discard!(10, 20);
    assert.ok(region.bytes.subarray(10, 30).every((b) => b === 0));
    assert.equal(region.bytes[9], 7);
    assert.equal(region.bytes[30], 7);
    writeSync(fd, new Uint8Array(1), 0, 1, 0);
    region.unmap();
  } finally {
    closeSync(fd);
  }
});

test('balloon: a statistics buffer made available before DRIVER_OK (Linux kicks while probing) is taken at activation', () => {
  const stats = encodeStats([{ tag: StatTag.MEMFREE, value: 42 * PAGE }]);
  const queue = new ScriptQueue([new DescriptorChain(0, 1, [stats], [], stats.length, 0)]);
  const { ctx } = context(queue, featureBit(BalloonFeature.STATS_VQ));
  const device = new BalloonDevice();
  // inflateq, deflateq, statsq: the stats queue is 2.
  device.activate({ ...ctx, queue: (i) => (i === 2 ? queue : undefined) });
  assert.deepEqual(device.stats?.values['free-memory'], { value: 42 * PAGE, unit: 'bytes' });
  assert.equal(queue.inFlight, 1, 'held until the host asks for fresh statistics');
});
