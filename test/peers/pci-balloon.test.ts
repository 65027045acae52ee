/**
 * paravirt's balloon driver against QEMU's own virtio-balloon-pci, over virtio-pci on a qtest
 * machine: features negotiated with QEMU; QEMU's `balloon` command sets the target, the driver
 * inflates from guest RAM (seeing QEMU's configuration change interrupt through INTx and ISR
 * status), QEMU's query-balloon shows what the driver wrote into `actual` and QEMU releases the
 * pages from the file backing guest RAM, and deflating gives them back; the statistics the
 * driver sends are what qom-get guest-stats shows (at start and after QEMU polls); and pages the
 * driver reports free are released by QEMU from that file too.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { join } from 'node:path';
import { statSync } from 'node:fs';
import { once } from 'node:events';
import { BalloonDriver } from '../../src/devices/balloon/driver.ts';
import { BalloonFeature, StatTag } from '../../src/devices/balloon/wire.ts';
import { hasFeature } from '../../src/virtio/constants.ts';
import { shareDir } from '../lab/guest.ts';
import { QmpClient } from '../lab/qmp.ts';
import { startQtest } from '../lab/qtest.ts';
import { virtioPciTransport } from '../lab/qtest-pci.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;
const RAM_MiB = 128;

test("paravirt's balloon driver with QEMU's virtio-balloon-pci: features, target and actual, released memory, statistics, free page reporting", async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'qtest-balloon');
  const qmpPath = join(share.dir, 'qmp.sock');
  const m = await startQtest({
    devices: [
      '-device', 'virtio-balloon-pci,id=balloon0,disable-legacy=on,addr=04.0,deflate-on-oom=on,free-page-reporting=on',
      '-qmp', `unix:${share.qemuPath(qmpPath)},server=on,wait=off`,
    ],
    memoryMiB: RAM_MiB,
    sharedRam: true,
  }, t);
  const socket = connect(qmpPath);
  await once(socket, 'connect');
  t.after(() => socket.destroy());
  const qmp = new QmpClient(socket);
  await qmp.negotiate();

  // Everything above 1 MiB has been used once, so the file backing RAM holds it.
  m.memory!.slice(MiB, (RAM_MiB - 1) * MiB).fill(0x5a);
  const ramBlocks = (): number => statSync(m.ramFile!).blocks * 512;
  const touched = ramBlocks();
  assert.ok(touched >= (RAM_MiB - 1) * MiB, `the RAM file holds ${touched} bytes`);

  let free = 77 * MiB;
  const transport = await virtioPciTransport(m, 4);
  const driver = await BalloonDriver.open(transport, {
    stats: () => [{ tag: StatTag.MEMFREE, value: free }, { tag: StatTag.MEMTOT, value: RAM_MiB * MiB }],
  });
  for (const bit of [BalloonFeature.STATS_VQ, BalloonFeature.DEFLATE_ON_OOM, BalloonFeature.PAGE_REPORTING]) {
    assert.ok(hasFeature(driver.core.features, bit), `feature ${bit} negotiated with QEMU`);
  }

  // QEMU's `balloon` names the memory the guest keeps: 96 MiB leaves 32 MiB in the balloon.
  // QEMU's query-balloon answers RAM less what the driver wrote into actual.
  const query = async (): Promise<number> => ((await qmp.execute('query-balloon')) as { actual: number }).actual;
  const balloonTo = async (guestBytes: number): Promise<void> => {
    await qmp.execute('balloon', { value: guestBytes });
    for (let actual = await query(); actual !== guestBytes; ) {
      // Each write of actual sends BALLOON_CHANGE, at most one a second, timed on the virtual
      // clock under qtest: step past the window so one held back goes out.
      const next = qmp.nextEvent('BALLOON_CHANGE');
      await m.bus.clockStep(1_000_000_000n);
      actual = ((await next).data as { actual: number }).actual;
    }
  };
  await balloonTo(96 * MiB);
  assert.equal(driver.size, (32 * MiB) / 4096);
  assert.equal(await query(), 96 * MiB);
  const inflated = ramBlocks();
  t.diagnostic(`QEMU's RAM file: ${(touched / MiB).toFixed(1)} MiB touched, ${(inflated / MiB).toFixed(1)} MiB after inflating 32 MiB`);
  assert.ok(touched - inflated >= 32 * MiB, `QEMU released ${touched - inflated} bytes of the RAM file`);

  // Back to no balloon: every page comes back to the driver's owner.
  await balloonTo(RAM_MiB * MiB);
  assert.equal(driver.size, 0);

  // Statistics: the buffer posted at start reached QEMU; after a poll, fresh ones do.
  const stats = async (): Promise<Record<string, number>> =>
    ((await qmp.execute('qom-get', { path: '/machine/peripheral/balloon0', property: 'guest-stats' })) as { stats: Record<string, number> }).stats;
  assert.equal((await stats())['stat-free-memory'], 77 * MiB);
  assert.equal((await stats())['stat-total-memory'], RAM_MiB * MiB);
  free = 55 * MiB;
  await qmp.execute('qom-set', { path: '/machine/peripheral/balloon0', property: 'guest-stats-polling-interval', value: 1 });
  // QEMU's poll timer runs on the virtual clock, which only the test moves under the qtest accelerator.
  assert.equal(m.accelerator, 'qtest', 'the poll needs a virtual clock the test can step');
  while ((await stats())['stat-free-memory'] !== 55 * MiB) await m.bus.clockStep(1_000_000_000n);

  // Free page reporting: 4 MiB the driver's owner does not use now go back to the host.
  const dma = transport.dma;
  const block = dma.alloc(4 * MiB, 2 * MiB)!;
  m.memory!.slice(block, 4 * MiB).fill(1);
  const beforeReport = ramBlocks();
  await driver.reportFree([{ addr: block, len: 4 * MiB }]);
  const afterReport = ramBlocks();
  t.diagnostic(`free page report of 4 MiB: RAM file ${(beforeReport / MiB).toFixed(1)} -> ${(afterReport / MiB).toFixed(1)} MiB`);
  assert.ok(beforeReport - afterReport >= 4 * MiB, `QEMU released ${beforeReport - afterReport} bytes on a report`);
  dma.free(block);
  await driver.close();
});
