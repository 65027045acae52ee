import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlkDevice, type BlkDeviceOptions } from '../../../src/devices/blk/device.ts';
import { BLK_DRIVER_FEATURES, BlkDriver } from '../../../src/devices/blk/driver.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import {
  BlkFeature,
  BlkStatus,
  BLK_CONFIG,
  RequestType,
  encodeRequestHeader,
} from '../../../src/devices/blk/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceId, Feature, featureBit, hasFeature } from '../../../src/virtio/constants.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { allQueues } from '../virtio/all-queues.ts';

const disk = (sectors = 64): MemoryBackend => new MemoryBackend(sectors * 512);

test('the offer follows the options: RO, MQ, SIZE_MAX, discard and ring features', () => {
  const plain = new BlkDevice({ backend: disk() });
  for (const bit of [BlkFeature.FLUSH, BlkFeature.CONFIG_WCE, BlkFeature.DISCARD, BlkFeature.WRITE_ZEROES, BlkFeature.SEG_MAX, BlkFeature.BLK_SIZE, Feature.RING_PACKED]) {
    assert.ok(hasFeature(plain.features, bit), `bit ${bit} offered`);
  }
  for (const bit of [BlkFeature.RO, BlkFeature.MQ, BlkFeature.SIZE_MAX, Feature.IN_ORDER]) assert.equal(hasFeature(plain.features, bit), false);

  const ro = new BlkDevice({ backend: disk(), readOnly: true, queues: 2, sizeMax: 4096, features: { packed: false } });
  assert.ok(hasFeature(ro.features, BlkFeature.RO) && hasFeature(ro.features, BlkFeature.MQ) && hasFeature(ro.features, BlkFeature.SIZE_MAX));
  assert.equal(hasFeature(ro.features, BlkFeature.DISCARD), false, 'no discard on a read-only disk');
  assert.equal(hasFeature(ro.features, Feature.RING_PACKED), false);

  const cfg = BLK_CONFIG.decode(ro.config);
  assert.equal(cfg.capacity, 64);
  assert.equal(cfg.numQueues, 2);
  assert.equal(cfg.sizeMax, 4096);
  assert.equal(cfg.segMax, 126, 'seg_max + 2 fits every ring of 128 entries or more');
  assert.equal(cfg.blkSize, 512);
  assert.equal(ro.maxQueueSize, 1024, 'every ring size a front-end picks is accepted');
});

test('seg_max is the longest chain a ring accepts, less header and status', () => {
  const segMax = (options: Omit<BlkDeviceOptions, 'backend'>): number => BLK_CONFIG.decode(new BlkDevice({ backend: disk(), ...options }).config).segMax;
  assert.equal(segMax({ queueSize: 16 }), 14, 'a device capped at small rings announces what fits them');
  assert.equal(segMax({ segMax: 1022 }), 1022, 'an indirect table of 1024 entries is accepted on any ring');
  assert.throws(() => segMax({ segMax: 1023 }), /virtio-blk seg_max 1023 is not an integer from 1 to 1022/);
  assert.equal(segMax({ queueSize: 32768, segMax: 32766 }), 32766);
  assert.throws(
    () => segMax({ queueSize: 64, segMax: 100, features: { indirect: false } }),
    /virtio-blk seg_max 100 is not an integer from 1 to 62/,
    'without indirect descriptors a request must fit the ring',
  );
});

test('bad options are refused with one sentence naming the option', () => {
  const cases: [() => unknown, RegExp][] = [
    [() => new BlkDevice({ backend: disk(), queues: 0 }), /virtio-blk queue count 0 is not an integer from 1 to 65535/],
    [() => new BlkDevice({ backend: disk(), queueSize: 100 }), /virtio-blk queue size 100 is not a power of two/],
    [() => new BlkDevice({ backend: disk(), serial: 'x'.repeat(21) }), /serial "x{21}" is not printable ASCII of at most 20 characters/],
    [() => new BlkDevice({ backend: disk(), serial: 'é' }), /serial "é" is not printable ASCII/],
    [() => new BlkDevice({ backend: disk(), blkSize: 1000 }), /block size 1000 is not a power of two of at least 512/],
    [() => new BlkDevice({ backend: disk(), features: { flush: false, configWce: true } }), /CONFIG_WCE needs FLUSH/],
    [() => new BlkDevice({ backend: new MemoryBackend(512, { readOnly: true }), readOnly: false }), /cannot be writable: its backend is read-only/],
  ];
  for (const [make, message] of cases) assert.throws(make, message);
});

test('the driver may write only writeback; other configuration bytes are restored', () => {
  const dev = new BlkDevice({ backend: disk() });
  const before = dev.config.slice();
  dev.config.fill(0x77);
  dev.configWritten(0, dev.config.length);
  const after = BLK_CONFIG.decode(dev.config);
  assert.equal(after.writeback, 1);
  assert.deepEqual({ ...after, writeback: 0 }, { ...BLK_CONFIG.decode(before), writeback: 0 });
  dev.config[BLK_CONFIG.offset.writeback] = 0;
  dev.configWritten(BLK_CONFIG.offset.writeback, 1);
  assert.equal(dev.writeback, false);
  dev.reset();
  assert.equal(dev.writeback, true, 'reset restores the initial cache mode');
});

/** A memory disk that counts flushes. */
class CountingDisk extends MemoryBackend {
  flushes = 0;
  override flush(): Promise<void> {
    this.flushes++;
    return super.flush();
  }
}

test('writes are durable at completion in writethrough mode and when FLUSH was not negotiated', async () => {
  const backend = new CountingDisk(64 * 512);
  const { transport } = createLoopback(new BlkDevice({ backend }), { memoryBytes: 1 << 20 });
  const blk = await BlkDriver.open(transport);
  await blk.write(0, new Uint8Array(512));
  assert.equal(backend.flushes, 0, 'writeback: no flush per write');
  await blk.setWriteback(false);
  await blk.write(0, new Uint8Array(512));
  assert.equal(backend.flushes, 1, 'writethrough: one flush per write');
  await blk.close();

  const noFlush = BLK_DRIVER_FEATURES & ~featureBit(BlkFeature.FLUSH) & ~featureBit(BlkFeature.CONFIG_WCE);
  const again = await BlkDriver.open(transport, { features: noFlush });
  await again.write(0, new Uint8Array(512));
  assert.equal(backend.flushes, 2, 'FLUSH offered but not negotiated: writethrough (§5.2.6.2)');
  await again.close();
});

test('CONFIG_WCE without FLUSH starts writethrough', async () => {
  const { transport } = createLoopback(new BlkDevice({ backend: disk() }), { memoryBytes: 1 << 20 });
  const blk = await BlkDriver.open(transport, { features: BLK_DRIVER_FEATURES & ~featureBit(BlkFeature.FLUSH) });
  assert.ok(hasFeature(blk.features, BlkFeature.CONFIG_WCE));
  assert.equal(blk.config.writeback, 0);
  await blk.close();
});

test('malformed requests on a real ring are answered and the device keeps serving', async () => {
  const backend = disk();
  const { transport, memory } = createLoopback(new BlkDevice({ backend }), { memoryBytes: 1 << 20 });
  const core = await VirtioDriver.start(transport, { name: 'raw-blk', deviceId: DeviceId.BLOCK, features: BLK_DRIVER_FEATURES, queues: allQueues });
  const q = core.queue(0);
  const buf = transport.dma.alloc(4096, 16) ?? assert.fail('no DMA memory');
  const header = (type: number, sector: number): void => void memory.write(buf, encodeRequestHeader({ type, reserved: 0, sector }));

  header(RequestType.OUT, 0);
  memory.slice(buf + 16, 512).fill(0xab);
  assert.equal(await q.submit([{ addr: buf, len: 16 }, { addr: buf + 16, len: 512 }], []), 0, 'no status byte: length 0');
  assert.ok(backend.bytes.every((b) => b === 0), 'and nothing written');

  memory.slice(buf + 1000, 1).fill(0xff);
  assert.equal(await q.submit([{ addr: buf, len: 8 }], [{ addr: buf + 1000, len: 1 }]), 1);
  assert.equal(memory.slice(buf + 1000, 1)[0], BlkStatus.IOERR, 'short header: IOERR');

  header(RequestType.IN, 64);
  assert.equal(await q.submit([{ addr: buf, len: 16 }], [{ addr: buf + 16, len: 513 }]), 513);
  assert.equal(memory.slice(buf + 16 + 512, 1)[0], BlkStatus.IOERR, 'past the end: IOERR');

  header(RequestType.OUT, 1);
  memory.slice(buf + 16, 512).fill(0xcd);
  assert.equal(await q.submit([{ addr: buf, len: 528 }], [{ addr: buf + 1000, len: 1 }]), 1);
  assert.equal(memory.slice(buf + 1000, 1)[0], BlkStatus.OK, 'a good request still works');
  assert.ok(backend.bytes.subarray(512, 1024).every((b) => b === 0xcd));
  transport.dma.free(buf);
  await core.close();
});

test('a reset with requests in flight fails them at the driver and a new driver starts cleanly', async () => {
  const backend = disk();
  const gate: (() => void)[] = [];
  let called!: () => void;
  const reached = new Promise<void>((resolve) => (called = resolve));
  const transfer = backend.transfer.bind(backend);
  backend.transfer = (op, offset, segments, done, tag) => {
    gate.push(() => transfer(op, offset, segments, done, tag));
    called();
  };
  const { transport } = createLoopback(new BlkDevice({ backend }), { memoryBytes: 1 << 20 });
  const first = await BlkDriver.open(transport);
  const pending = first.read(0, 512);
  await reached;
  await first.close();
  await assert.rejects(pending, /driver closed/);
  for (const release of gate.splice(0)) release();

  backend.transfer = transfer;
  const second = await BlkDriver.open(transport);
  backend.bytes.fill(0x11, 0, 512);
  assert.deepEqual(await second.read(0, 512), new Uint8Array(512).fill(0x11));
  await second.close();
});
