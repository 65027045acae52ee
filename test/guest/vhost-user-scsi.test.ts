/**
 * A stock Linux guest under QEMU uses paravirt's virtio-scsi controller through
 * vhost-user-scsi-pci: the guest's virtio_scsi and sd drivers scan the LUNs, read and write them,
 * and what they write must land in the image files. QEMU is the front-end and owns the
 * configuration space; this process serves every queue (controlq, eventq, request queues).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { type LunSpec } from '../../src/devices/scsi/descriptor.ts';
import { ScsiDevice } from '../../src/devices/scsi/device.ts';
import { openDisk, openLuns } from '../../src/devices/scsi/luns.ts';
import { seekData } from '../../src/native/file-space.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { startGuest, type Guest } from '../lab/guest.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;
const RING_PACKED = 34;

interface Controller {
  readonly dir: string;
  readonly images: string[];
  readonly device: ScsiDevice;
  /** Kicks the device received, per queue. */
  readonly kicks: number[];
  readonly devices: string[];
  /** A new sparse image file of `bytes`. */
  image(name: string, bytes: number): string;
  /** Open an image as a LUN disk sharing the controller's I/O threads. */
  disk(spec: LunSpec, target: number, lun: number): ReturnType<typeof openDisk>;
}

interface ControllerOptions {
  readonly luns: readonly { readonly bytes: number; readonly readOnly?: boolean; readonly contents?: Uint8Array }[];
  readonly queues?: number;
  readonly packed?: boolean;
}

async function serveController(t: TestContext, options: ControllerOptions): Promise<Controller> {
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vu-scsi-'));
  const image = (name: string, bytes: number): string => {
    const path = join(dir, name);
    writeFileSync(path, new Uint8Array(0));
    truncateSync(path, bytes);
    return path;
  };
  const images = options.luns.map((l, i) => {
    const path = image(`lun${i}.img`, l.bytes);
    if (l.contents !== undefined) writeFileSync(path, l.contents, { flag: 'r+' });
    return path;
  });
  const luns = await openLuns(images.map((path, i) => ({ path, readOnly: options.luns[i].readOnly === true })));
  const queues = options.queues ?? 1;
  const device = new ScsiDevice({ targets: luns.targets, queues });
  const kicks = new Array<number>(device.numQueues).fill(0);
  const notify = device.queueNotify.bind(device);
  device.queueNotify = (index: number): void => {
    kicks[index]++;
    notify(index);
  };
  const server = BackendServer.listen(device, { socketPath: join(dir, 'scsi.sock') }, pino({ level: process.env.PARAVIRT_LOG ?? 'warn' }));
  t.after(async () => {
    await server.close();
    await luns.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const props = ['chardev=vuscsi', `num_queues=${queues}`, ...(options.packed === true ? ['packed=on'] : [])];
  return {
    dir,
    images,
    device,
    kicks,
    devices: ['-chardev', `socket,id=vuscsi,path=${qemu.toQemuPath(join(dir, 'scsi.sock'))}`, '-device', `vhost-user-scsi-pci,${props.join(',')}`],
    image,
    disk: (spec, target, lun) => openDisk(spec, { target, lun }, luns.threads),
  };
}

/** The guest's disks by SCSI address "H:C:T:L" → "sdX". */
async function guestDisks(guest: Guest): Promise<Map<string, string>> {
  const out = await guest.check('for d in /sys/block/sd*; do [ -e $d/device/scsi_device ] && echo $(basename $d) $(ls $d/device/scsi_device); done; true');
  const map = new Map<string, string>();
  for (const line of out.trim().split('\n').filter(Boolean)) {
    const [name, address] = line.split(' ');
    map.set(address.split(':').slice(2).join(':'), name);
  }
  return map;
}

/** Wait in the guest until `sdX` count matches (scanning and hot-plug run asynchronously). */
async function waitForDisks(guest: Guest, count: number): Promise<void> {
  await guest.check(`for i in $(seq 300); do [ $(ls -d /sys/block/sd* 2>/dev/null | wc -l) -eq ${count} ] && exit 0; sleep 0.1; done; ls /sys/block; exit 1`, { timeoutMs: 60_000 });
}

function fileHash(path: string, bytes: number, offset = 0): string {
  return createHash('sha256').update(readFileSync(path).subarray(offset, offset + bytes)).digest('hex');
}

/** Writes `mib` MiB of random data to /dev/`disk`, reads it back uncached, and checks both against the image. */
async function patternRoundTrip(guest: Guest, disk: string, image: string, mib: number): Promise<void> {
  await guest.check(`dd if=/dev/urandom of=/tmp/pattern-${disk} bs=1M count=${mib} 2>/dev/null`);
  const written = (await guest.check(`sha256sum /tmp/pattern-${disk}`)).split(' ')[0];
  await guest.check(`dd if=/tmp/pattern-${disk} of=/dev/${disk} bs=1M oflag=direct 2>/dev/null && rm /tmp/pattern-${disk}`, { timeoutMs: 120_000 });
  const readBack = (await guest.check(`dd if=/dev/${disk} bs=1M count=${mib} iflag=direct 2>/dev/null | sha256sum`, { timeoutMs: 120_000 })).split(' ')[0];
  assert.equal(readBack, written, `${disk}: the guest reads back what it wrote`);
  assert.equal(fileHash(image, mib * MiB), written, `${disk}: the image file holds what the guest wrote`);
}

function firstData(image: string): number | null {
  const fd = openSync(image, 'r');
  try {
    return seekData(fd, 0);
  } finally {
    closeSync(fd);
  }
}

test('vhost-user-scsi: stock virtio_scsi and sd see the LUNs; 64 MiB verified on two; read-only refuses writes; discard punches holes', async (t) => {
  if (!requireLab(t)) return;
  const ro = new Uint8Array(MiB).fill(0xa5);
  const ctl = await serveController(t, { luns: [{ bytes: 96 * MiB }, { bytes: 96 * MiB }, { bytes: 8 * MiB, readOnly: true, contents: ro }] });
  const guest = await startGuest(t, { name: 'vu-scsi', devices: ctl.devices });
  await waitForDisks(guest, 3);
  const disks = await guestDisks(guest);
  assert.deepEqual([...disks.keys()].sort(), ['0:0', '0:1', '0:2'], 'three LUNs on target 0');
  const features = await guest.check('for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0008 ] && cat $d/features; done');
  assert.equal(features.trim()[RING_PACKED], '0', 'a split ring (QEMU\'s default)');
  const [a, b, r] = ['0:0', '0:1', '0:2'].map((k) => disks.get(k)!);
  assert.equal((await guest.check(`cat /sys/block/${a}/size`)).trim(), String((96 * MiB) / 512));
  assert.equal((await guest.check(`cat /sys/block/${a}/device/vendor`)).trim(), 'PARAVIRT');
  assert.equal((await guest.check(`cat /sys/block/${a}/queue/rotational`)).trim(), '0', 'VPD B1h: non-rotating');
  assert.equal((await guest.check(`cat /sys/block/${a}/queue/write_cache`)).trim(), 'write back', 'caching page: WCE');

  await patternRoundTrip(guest, a, ctl.images[0], 64);
  await patternRoundTrip(guest, b, ctl.images[1], 64);

  // Read-only LUN: the mode page's WP makes the guest see it read-only; a write is refused.
  assert.equal((await guest.check(`cat /sys/block/${r}/ro`)).trim(), '1');
  const write = await guest.run(`dd if=/dev/zero of=/dev/${r} bs=4k count=1 oflag=direct`);
  assert.notEqual(write.code, 0, 'a write to the read-only LUN fails in the guest');
  assert.match((await guest.check(`dd if=/dev/${r} bs=16 count=1 iflag=direct 2>/dev/null | od -An -tx1`)).trim(), /^(a5 ){15}a5$/);
  assert.deepEqual(readFileSync(ctl.images[2]).subarray(0, MiB), Buffer.from(ro), 'the read-only image is unchanged');

  // Discard: the sd driver chose UNMAP (VPD B2h LBPU); the range becomes a hole in the file.
  assert.equal((await guest.check(`cat /sys/block/${a}/device/scsi_disk/*/provisioning_mode`)).trim(), 'unmap');
  assert.equal(firstData(ctl.images[0]), 0);
  await guest.check(`blkdiscard -o 0 -l ${32 * MiB} /dev/${a}`);
  const data = firstData(ctl.images[0]);
  assert.ok(data === null || data >= 32 * MiB, `the discarded 32 MiB are a hole in the image (data at ${data})`);
  assert.equal((await guest.check(`dd if=/dev/${a} bs=1M count=32 iflag=direct 2>/dev/null | tr -d "\\000" | wc -c`)).trim(), '0', 'discarded blocks read back as zeroes');
});

test('vhost-user-scsi: 256 LUNs seen by the stock drivers; packed ring, two request queues both used; an ext4 file system keeps its files', async (t) => {
  if (!requireLab(t)) return;
  const LUNS = 256;
  const luns = Array.from({ length: LUNS }, (_, i) => ({ bytes: i === 0 ? 64 * MiB : MiB }));
  const ctl = await serveController(t, { luns, queues: 2, packed: true });
  // A file system made on the host; the guest mounts it, writes files, and reads them back after a remount.
  execFileSync('mkfs.ext4', ['-q', '-F', ctl.images[0]]);
  const guest = await startGuest(t, { name: 'vu-scsi-256', devices: ctl.devices, cpus: 2, memoryMiB: 512 });
  await waitForDisks(guest, LUNS);
  const disks = await guestDisks(guest);
  assert.equal(disks.size, LUNS);
  for (let lun = 0; lun < LUNS; lun++) assert.ok(disks.has(`0:${lun}`), `LUN ${lun} is a disk in the guest`);
  const features = await guest.check('for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0008 ] && cat $d/features; done');
  assert.equal(features.trim()[RING_PACKED], '1', 'VIRTIO_F_RING_PACKED negotiated');
  assert.equal((await guest.check(`ls /sys/block/${disks.get('0:0')}/mq | wc -l`)).trim(), '2', 'two request queues');

  const fs = disks.get('0:0')!;
  await guest.check(
    `mkdir -p /mnt && mount -t ext4 /dev/${fs} /mnt && dd if=/dev/urandom of=/mnt/a bs=1M count=8 2>/dev/null && ` +
      'dd if=/dev/urandom of=/mnt/b bs=4k count=100 2>/dev/null && sha256sum /mnt/a /mnt/b > /tmp/sums && umount /mnt',
  );
  await guest.check(`echo 3 > /proc/sys/vm/drop_caches; mount -t ext4 /dev/${fs} /mnt && sha256sum -c /tmp/sums && umount /mnt`);
  execFileSync('e2fsck', ['-n', '-f', ctl.images[0]], { stdio: 'ignore' });

  // Both request queues carry I/O: blk-mq maps each CPU to its own queue.
  const before = [...ctl.kicks];
  await guest.check(
    `taskset 1 dd if=/dev/${disks.get('0:7')} of=/dev/null bs=4k count=200 iflag=direct 2>/dev/null & ` +
      `taskset 2 dd if=/dev/${disks.get('0:200')} of=/dev/null bs=4k count=200 iflag=direct 2>/dev/null; wait`,
  );
  assert.ok(ctl.kicks[2] > before[2] && ctl.kicks[3] > before[3], `kicks per request queue: ${ctl.kicks.slice(2).join(', ')}`);
  // A pattern on a LUN far down the list.
  await patternRoundTrip(guest, disks.get('0:255')!, ctl.images[255], 1);
});

test('vhost-user-scsi: a LUN hot-plugged appears as a new disk, one hot-unplugged disappears, I/O on another runs throughout', async (t) => {
  if (!requireLab(t)) return;
  const ctl = await serveController(t, { luns: [{ bytes: 32 * MiB }, { bytes: 8 * MiB }] });
  const guest = await startGuest(t, { name: 'vu-scsi-hotplug', devices: ctl.devices });
  await waitForDisks(guest, 2);
  const first = (await guestDisks(guest)).get('0:0')!;
  // I/O on LUN 0 in the background for the whole exchange.
  await guest.check(`(while [ ! -e /tmp/stop ]; do dd if=/dev/urandom of=/dev/${first} bs=64k count=16 oflag=direct 2>/dev/null; dd if=/dev/${first} of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null; done; echo done > /tmp/io-done) >/dev/null 2>&1 &`);

  const features = ctl.device.driverFeatures ?? 0n;
  assert.ok((features & (1n << 1n)) !== 0n, 'VIRTIO_SCSI_F_HOTPLUG negotiated');
  const added = ctl.image('added.img', 16 * MiB);
  writeFileSync(added, new Uint8Array(4096).fill(0x6b), { flag: 'r+' });
  ctl.device.attach({ target: 0, lun: 5 }, await ctl.disk({ path: added, readOnly: false }, 0, 5));
  await waitForDisks(guest, 3);
  const plugged = (await guestDisks(guest)).get('0:5');
  assert.ok(plugged !== undefined, 'LUN 5 is a disk in the guest');
  assert.match((await guest.check(`dd if=/dev/${plugged} bs=16 count=1 iflag=direct 2>/dev/null | od -An -tx1`)).trim(), /^(6b ){15}6b$/, 'it reads the new image');

  const removed = await ctl.device.detach({ target: 0, lun: 1 });
  await removed.storage.close();
  await waitForDisks(guest, 2);
  assert.deepEqual([...(await guestDisks(guest)).keys()].sort(), ['0:0', '0:5'], 'LUN 1 is gone from the guest');

  await guest.check('touch /tmp/stop; for i in $(seq 300); do [ -e /tmp/io-done ] && exit 0; sleep 0.1; done; exit 1', { timeoutMs: 60_000 });
  await patternRoundTrip(guest, first, ctl.images[0], 8);
});

test('vhost-user-scsi: a capacity change reaches the guest (unit attention 2A/09, PARAM_CHANGE when negotiated)', async (t) => {
  if (!requireLab(t)) return;
  const ctl = await serveController(t, { luns: [{ bytes: 16 * MiB }] });
  const guest = await startGuest(t, { name: 'vu-scsi-resize', devices: ctl.devices });
  await waitForDisks(guest, 1);
  const disk = (await guestDisks(guest)).get('0:0')!;
  assert.equal((await guest.check(`cat /sys/block/${disk}/size`)).trim(), String((16 * MiB) / 512));
  truncateSync(ctl.images[0], 48 * MiB);
  const grown = await ctl.disk({ path: ctl.images[0], readOnly: false }, 0, 0);
  const old = ctl.device.resize({ target: 0, lun: 0 }, grown.storage);
  await old.close();
  // Without PARAM_CHANGE the guest learns it from the unit attention; a rescan reads the new size.
  if (((ctl.device.driverFeatures ?? 0n) & (1n << 2n)) === 0n) await guest.run(`dd if=/dev/${disk} of=/dev/null bs=512 count=1 iflag=direct 2>/dev/null; echo 1 > /sys/block/${disk}/device/rescan`);
  await guest.check(`for i in $(seq 300); do [ $(cat /sys/block/${disk}/size) -eq ${(48 * MiB) / 512} ] && exit 0; sleep 0.1; done; cat /sys/block/${disk}/size; exit 1`, { timeoutMs: 60_000 });
});
