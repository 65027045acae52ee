/**
 * paravirt's blk driver, unchanged, over the virtio-pci transport against QEMU's own
 * virtio-blk-pci on a raw image file: a device model nobody here wrote, reached as a guest kernel
 * reaches it (configuration space, BARs, common configuration, notify writes, INTx). A random
 * mix of writes, reads, flushes and write-zeroes runs concurrently on two queues, checked against
 * a model of the disk and finally against the image file itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BlkDriver } from '../../src/devices/blk/driver.ts';
import { BlkFeature } from '../../src/devices/blk/wire.ts';
import { q35IntxLine } from '../../src/transports/pci/q35.ts';
import { VirtioPciTransport } from '../../src/transports/pci/transport.ts';
import { Feature, hasFeature } from '../../src/virtio/constants.ts';
import { describeFeatures } from '../../src/virtio/features.ts';
import { shareDir } from '../lab/guest.ts';
import { startQtest } from '../lab/qtest.ts';
import { virtioPciTransport } from '../lab/qtest-pci.ts';
import { requireLab } from '../lab/require.ts';
import { pattern, random } from '../lab/disk-pattern.ts';

const SECTOR = 512;
/** The disk is cut into slots; the requests of one concurrent batch touch distinct slots. */
const SLOTS = 16;
const SLOT_SECTORS = 32;
const DISK_BYTES = SLOTS * SLOT_SECTORS * SECTOR;
const BATCHES = 40;
const SEED = 0x5eed;
const BLK_NAMES: Readonly<Record<number, string>> = Object.fromEntries(Object.entries(BlkFeature).map(([name, bit]) => [bit, name]));

const VARIANTS = [
  { packed: false, inOrder: false },
  { packed: true, inOrder: false },
  { packed: false, inOrder: true },
  { packed: true, inOrder: true },
];

for (const { packed, inOrder } of VARIANTS) {
  const ring = `${packed ? 'packed' : 'split'} ring${inOrder ? ', IN_ORDER' : ''}`;
  test(`paravirt's blk driver against QEMU's virtio-blk-pci on a raw image, over virtio-pci (${ring}): a random mix matches a model and the file`, async (t) => {
    if (!requireLab(t)) return;
    const share = shareDir(t, 'pci-blk');
    const image = join(share.dir, 'disk.raw');
    const initial = pattern(1, DISK_BYTES);
    writeFileSync(image, initial);
    const started = performance.now();
    const m = await startQtest(
      {
        devices: [
          '-blockdev', `driver=file,node-name=disk0,filename=${share.qemuPath(image)}`,
          '-device', `virtio-blk-pci,drive=disk0,addr=04.0,disable-legacy=on,num-queues=2,packed=${packed ? 'on' : 'off'},in_order=${inOrder ? 'on' : 'off'}`,
        ],
        sharedRam: true,
      },
      t,
    );
    const blk = await BlkDriver.open(await virtioPciTransport(m, 4));
    const opened = performance.now();

    const has = (bit: number): boolean => hasFeature(blk.features, bit);
    assert.equal(has(Feature.RING_PACKED), packed, 'the ring layout QEMU was told to offer');
    assert.equal(has(Feature.IN_ORDER), inOrder, 'IN_ORDER when QEMU offers it');
    assert.ok(has(Feature.VERSION_1) && has(BlkFeature.FLUSH) && has(BlkFeature.MQ) && has(BlkFeature.WRITE_ZEROES));
    assert.equal(blk.queues, 2, 'both request queues are used');
    assert.equal(blk.capacity, DISK_BYTES / SECTOR, 'capacity from the device configuration structure');
    assert.deepEqual(await blk.read(0, DISK_BYTES), initial, 'the image as written before QEMU started');

    const model = initial.slice();
    const next = random(SEED);
    let requests = 0;
    for (let batch = 0; batch < BATCHES; batch++) {
      const slots = new Set<number>();
      const width = 1 + next(8);
      while (slots.size < width) slots.add(next(SLOTS));
      await Promise.all(
        [...slots].map(async (slot) => {
          requests++;
          const at = next(SLOT_SECTORS);
          const sector = slot * SLOT_SECTORS + at;
          const count = 1 + next(SLOT_SECTORS - at);
          const bytes = count * SECTOR;
          const where = `seed 0x${SEED.toString(16)}, batch ${batch}, sectors ${sector}+${count}`;
          switch (next(4)) {
            case 0: {
              const data = pattern(batch * SLOTS + slot, bytes);
              await blk.write(sector, data);
              model.set(data, sector * SECTOR);
              return;
            }
            case 1:
              await blk.writeZeroes(sector, count);
              model.fill(0, sector * SECTOR, sector * SECTOR + bytes);
              return;
            case 2:
              await blk.flush();
              return;
            default:
              assert.deepEqual(await blk.read(sector, bytes), model.subarray(sector * SECTOR, sector * SECTOR + bytes), where);
          }
        }),
      );
    }
    await blk.flush();
    const mixed = performance.now();
    assert.deepEqual(await blk.read(0, DISK_BYTES), model, 'the whole disk reads back as the model');
    assert.deepEqual(new Uint8Array(readFileSync(image)), model, 'and the image file holds it too');
    await blk.close();
    t.diagnostic(
      `QEMU ${m.qemu.version} (${m.accelerator}): start+open ${(opened - started).toFixed(0)} ms, ` +
        `${requests} requests in ${(mixed - opened).toFixed(0)} ms; negotiated ${describeFeatures(blk.features, BLK_NAMES)}`,
    );
  });
}

test('a transitional virtio-blk-pci is driven through its modern structures, and a second driver after a reset finds what the first wrote', async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'pci-blk');
  const image = join(share.dir, 'disk.raw');
  writeFileSync(image, new Uint8Array(64 * SECTOR));
  const m = await startQtest(
    {
      devices: [
        '-blockdev', `driver=file,node-name=disk0,filename=${share.qemuPath(image)}`,
        '-device', 'virtio-blk-pci,drive=disk0,addr=04.0,disable-legacy=off,disable-modern=off',
      ],
      sharedRam: true,
    },
    t,
  );
  const transport = await virtioPciTransport(m, 4);
  assert.equal(await m.pciConfigRead(transport.target, 0x02, 2), 0x1001, 'the transitional PCI device id (§4.1.2.1)');
  const first = await BlkDriver.open(transport);
  const data = pattern(7, 8 * SECTOR);
  await first.write(8, data);
  await first.close();
  // close() reset the device (§4.1.4.3.2) and released the transport. The BARs move (as after a
  // firmware rescan), and a new transport takes the function over.
  const bars = await m.pci.assignBars(transport.target);
  const again = await VirtioPciTransport.open(m.bus, m.pci, transport.target, bars, {
    memory: transport.memory,
    dma: transport.dma,
    intxLine: q35IntxLine,
  });
  const second = await BlkDriver.open(again);
  assert.deepEqual(await second.read(8, data.length), data);
  await second.close();
});
