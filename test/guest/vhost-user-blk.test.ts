/**
 * A stock Linux guest under QEMU uses paravirt's BlkDevice through vhost-user-blk-pci: QEMU is
 * the front-end, this process the back-end (BackendServer, as `paravirt serve blk` runs it).
 * What the guest writes must land in the image file, what it reads must come from there.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { vhostUserBlkDevice } from '../../src/devices/blk/device.ts';
import { FileBackend } from '../../src/storage/file-backend.ts';
import { seekData } from '../../src/native/file-space.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { startGuest, type Guest } from '../lab/guest.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 128 * MiB;
const PATTERN_MiB = 64;
/** Bit 34 of the guest's negotiated features (VIRTIO_F_RING_PACKED). */
const RING_PACKED = 34;

interface Disk {
  readonly image: string;
  readonly devices: string[];
  /** Kicks the device received, per queue. */
  readonly kicks: number[];
  /** Flushes that reached the image file. */
  readonly flushes: { count: number };
}

interface DiskOptions {
  readonly packed?: boolean;
  readonly queues?: number;
  readonly readOnly?: boolean;
  /** Bytes to put in the image before the guest starts. */
  readonly contents?: Uint8Array;
  /** QEMU's queue-size property: the ring size the front-end picks (QEMU's default 128 when absent). */
  readonly queueSize?: number;
}

/** An image and a running back-end serving it, gone when the test ends. */
async function serveDisk(t: TestContext, options: DiskOptions = {}): Promise<Disk> {
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vu-blk-'));
  const image = join(dir, 'disk.img');
  // A sparse image: holes read as zeroes and discards are visible as freed blocks.
  writeFileSync(image, new Uint8Array(0));
  truncateSync(image, IMAGE_SIZE);
  if (options.contents !== undefined) writeFileSync(image, options.contents, { flag: 'r+' });
  const socketPath = join(dir, 'blk.sock');
  const backend = await FileBackend.open(image, { readOnly: options.readOnly === true });
  const flushes = { count: 0 };
  const flush = backend.flush.bind(backend);
  backend.flush = (): Promise<void> => {
    flushes.count++;
    return flush();
  };
  // The device keeps its defaults whatever ring size QEMU is told to use: accepting it is the point.
  const device = vhostUserBlkDevice(backend, { queues: options.queues, readOnly: options.readOnly });
  const kicks = new Array<number>(device.numQueues).fill(0);
  const notify = device.queueNotify.bind(device);
  device.queueNotify = (index: number): void => {
    kicks[index]++;
    notify(index);
  };
  const server = BackendServer.listen(device, { socketPath }, pino({ level: process.env.PARAVIRT_LOG ?? 'warn' }));
  t.after(async () => {
    await server.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const props = [
    `chardev=vublk`,
    `num-queues=${options.queues ?? 1}`,
    ...(options.packed === true ? ['packed=on'] : []),
    ...(options.queueSize !== undefined ? [`queue-size=${options.queueSize}`] : []),
  ];
  return {
    image,
    kicks,
    flushes,
    devices: ['-chardev', `socket,id=vublk,path=${qemu.toQemuPath(socketPath)}`, '-device', `vhost-user-blk-pci,${props.join(',')}`],
  };
}

/** Offset of the image's first allocated byte (SEEK_DATA), or null when it is all hole. */
function firstData(image: string): number | null {
  const fd = openSync(image, 'r');
  try {
    return seekData(fd, 0);
  } finally {
    closeSync(fd);
  }
}

/** The guest's negotiated feature bits of its virtio-blk device (sysfs prints bit 0 first). */
async function blkFeatures(guest: Guest): Promise<string> {
  const out = await guest.check(
    'for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0002 ] && cat $d/features; done',
  );
  return out.trim();
}

/** Writes a random pattern through the disk, reads it back uncached, and checks both hashes against the image file. */
async function patternRoundTrip(guest: Guest, image: string): Promise<void> {
  await guest.check(`dd if=/dev/urandom of=/tmp/pattern bs=1M count=${PATTERN_MiB} 2>/dev/null`);
  const written = (await guest.check('sha256sum /tmp/pattern')).split(' ')[0];
  await guest.check(`dd if=/tmp/pattern of=/dev/vda bs=1M oflag=direct 2>/dev/null`, { timeoutMs: 120_000 });
  const readBack = (await guest.check(`dd if=/dev/vda bs=1M count=${PATTERN_MiB} iflag=direct 2>/dev/null | sha256sum`, { timeoutMs: 120_000 })).split(' ')[0];
  assert.equal(readBack, written, 'the guest reads back what it wrote');
  const onHost = createHash('sha256').update(readFileSync(image).subarray(0, PATTERN_MiB * MiB)).digest('hex');
  assert.equal(onHost, written, 'the image file holds what the guest wrote');
}

test('vhost-user-blk, split ring: 64 MiB written and read back, flush, discard punches holes', async (t) => {
  if (!requireLab(t)) return;
  const disk = await serveDisk(t);
  const guest = await startGuest(t, { name: 'vu-blk-split', devices: disk.devices });
  assert.equal((await blkFeatures(guest))[RING_PACKED], '0', 'a split ring was negotiated');
  await patternRoundTrip(guest, disk.image);

  // A write-back cache: the guest flushes it, and the flush must complete.
  assert.equal((await guest.check('cat /sys/block/vda/queue/write_cache')).trim(), 'write back');
  const flushesBefore = disk.flushes.count;
  await guest.check('dd if=/dev/urandom of=/dev/vda bs=4k count=16 seek=20000 conv=fsync 2>/dev/null');
  assert.ok(disk.flushes.count > flushesBefore, 'fsync in the guest reached the image file as a flush');

  assert.equal(firstData(disk.image), 0, 'the pattern is allocated in the image');
  await guest.check('blkdiscard -o 0 -l 33554432 /dev/vda');
  // A hole is what a discard leaves; block counts would also move with the file system's extent metadata.
  const data = firstData(disk.image);
  assert.ok(data === null || data >= 32 * MiB, `the discarded 32 MiB are a hole in the image (data at ${data})`);
  const zeroes = (await guest.check('dd if=/dev/vda bs=1M count=32 iflag=direct 2>/dev/null | tr -d "\\000" | wc -c')).trim();
  assert.equal(zeroes, '0', 'discarded blocks read back as zeroes');
});

/** QEMU's vhost-user-blk-pci default queue-size. */
const QEMU_QUEUE_SIZE = 128;

for (const { packed, queueSize } of [
  { packed: true, queueSize: undefined },
  { packed: false, queueSize: 1024 },
  { packed: true, queueSize: 1024 },
]) {
  const ring = `${packed ? 'packed' : 'split'} ring of ${queueSize ?? `${QEMU_QUEUE_SIZE} (QEMU's default)`}`;
  test(`vhost-user-blk, ${ring}: negotiated and carrying 64 MiB both ways`, async (t) => {
    if (!requireLab(t)) return;
    const disk = await serveDisk(t, { packed, queueSize });
    const guest = await startGuest(t, { name: `vu-blk-${packed ? 'packed' : 'split'}-${queueSize ?? QEMU_QUEUE_SIZE}`, devices: disk.devices });
    assert.equal((await blkFeatures(guest))[RING_PACKED], packed ? '1' : '0', `VIRTIO_F_RING_PACKED ${packed ? '' : 'not '}negotiated`);
    // With indirect descriptors each request takes one slot: the driver's tags are the ring's entries.
    assert.equal((await guest.check('cat /sys/block/vda/mq/0/nr_tags')).trim(), String(queueSize ?? QEMU_QUEUE_SIZE), 'the ring size QEMU was told');
    assert.equal((await guest.check('cat /sys/block/vda/queue/max_segments')).trim(), '126', 'seg_max does not depend on the ring size');
    await patternRoundTrip(guest, disk.image);
  });
}

test('vhost-user-blk with two queues: both serve I/O', async (t) => {
  if (!requireLab(t)) return;
  const disk = await serveDisk(t, { queues: 2 });
  const guest = await startGuest(t, { name: 'vu-blk-mq', devices: disk.devices, cpus: 2 });
  assert.equal((await guest.check('ls /sys/block/vda/mq | wc -l')).trim(), '2', 'the guest set up two request queues');
  // blk-mq maps each CPU to its own queue: I/O issued from both CPUs uses both queues.
  await guest.check(
    'taskset 1 dd if=/dev/urandom of=/dev/vda bs=1M count=8 oflag=direct 2>/dev/null & ' +
      'taskset 2 dd if=/dev/urandom of=/dev/vda bs=1M count=8 seek=16 oflag=direct 2>/dev/null; wait',
  );
  assert.ok(disk.kicks[0] > 0 && disk.kicks[1] > 0, `kicks per queue: ${disk.kicks.join(', ')}`);
  const sums = await guest.check('for c in 1 2; do taskset $c dd if=/dev/vda bs=1M count=24 iflag=direct 2>/dev/null | sha256sum; done');
  const [a, b] = sums.trim().split('\n').map((l) => l.split(' ')[0]);
  assert.equal(a, b, 'both queues read the same disk contents');
  const onHost = createHash('sha256').update(readFileSync(disk.image).subarray(0, 24 * MiB)).digest('hex');
  assert.equal(a, onHost);
});

test('vhost-user-blk read-only: the guest sees a read-only disk and cannot change the image', async (t) => {
  if (!requireLab(t)) return;
  const contents = new Uint8Array(MiB).fill(0xa5);
  const disk = await serveDisk(t, { readOnly: true, contents });
  const guest = await startGuest(t, { name: 'vu-blk-ro', devices: disk.devices });
  assert.equal((await guest.check('cat /sys/block/vda/ro')).trim(), '1');
  const write = await guest.run('dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct');
  assert.notEqual(write.code, 0, 'a write to the read-only disk fails in the guest');
  const firstBytes = (await guest.check('dd if=/dev/vda bs=16 count=1 iflag=direct 2>/dev/null | od -An -tx1')).trim();
  assert.match(firstBytes, /^(a5 ){15}a5$/);
  assert.deepEqual(readFileSync(disk.image).subarray(0, MiB), Buffer.from(contents), 'the image is unchanged');
});

test('vhost-user-blk survives the guest driver resetting the device: unbind, bind, and the disk still works', async (t) => {
  if (!requireLab(t)) return;
  const disk = await serveDisk(t, { contents: new Uint8Array(4096).fill(0x3c) });
  const guest = await startGuest(t, { name: 'vu-blk-rebind', devices: disk.devices });
  // Unbinding resets the virtio device: QEMU stops the vhost-user rings (GET_VRING_BASE) and
  // starts them again when the driver binds.
  await guest.check(
    'dev=$(basename $(readlink /sys/block/vda/device)); ' +
      'echo $dev > /sys/bus/virtio/drivers/virtio_blk/unbind && echo $dev > /sys/bus/virtio/drivers/virtio_blk/bind',
  );
  await guest.check('for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done; [ -b /dev/vda ]');
  await guest.check('dd if=/dev/urandom of=/dev/vda bs=4k count=256 seek=1 oflag=direct 2>/dev/null');
  const first = (await guest.check('dd if=/dev/vda bs=16 count=1 iflag=direct 2>/dev/null | od -An -tx1')).trim();
  assert.match(first, /^(3c ){15}3c$/, 'the disk reads its image after the restart');
  const guestSum = (await guest.check('dd if=/dev/vda bs=4k skip=1 count=256 iflag=direct 2>/dev/null | sha256sum')).split(' ')[0];
  const hostSum = createHash('sha256').update(readFileSync(disk.image).subarray(4096, 4096 + 256 * 4096)).digest('hex');
  assert.equal(guestSum, hostSum, 'writes after the restart reach the image');
});

test('vhost-user-blk keeps serving while QEMU adds guest memory (ADD_MEM_REG under running rings)', async (t) => {
  if (!requireLab(t)) return;
  const disk = await serveDisk(t);
  const guest = await startGuest(t, {
    name: 'vu-blk-hotplug',
    // The later -m wins: room for one more DIMM.
    devices: [...disk.devices, '-m', '512M,slots=2,maxmem=1G'],
  });
  await guest.check('dd if=/dev/urandom of=/tmp/a bs=1M count=8 2>/dev/null && dd if=/tmp/a of=/dev/vda bs=1M oflag=direct 2>/dev/null');
  await guest.qmp('object-add', { 'qom-type': 'memory-backend-memfd', id: 'hot0', size: 128 * MiB, share: true });
  await guest.qmp('device_add', { driver: 'pc-dimm', id: 'dimm0', memdev: 'hot0' });
  // I/O after the change: the rings were rebuilt over the new memory table.
  const written = (await guest.check('sha256sum /tmp/a')).split(' ')[0];
  const readBack = (await guest.check('dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | sha256sum')).split(' ')[0];
  assert.equal(readBack, written);
  await guest.check('dd if=/dev/urandom of=/dev/vda bs=1M count=8 seek=8 oflag=direct 2>/dev/null');
});
