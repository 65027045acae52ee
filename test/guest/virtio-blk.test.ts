import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { shareDir, startGuest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const MiB = 1024 * 1024;

test('virtio-blk: the guest reads what the host wrote and the host reads what the guest wrote', async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'blk');
  const image = join(share.dir, 'disk.img');
  const hostPattern = randomBytes(4 * MiB);
  writeFileSync(image, Buffer.concat([hostPattern, Buffer.alloc(4 * MiB)]));

  const guest = await startGuest(t, {
    name: 'virtio-blk',
    devices: [
      '-blockdev', `driver=file,node-name=disk,filename=${share.qemuPath(image)}`,
      '-device', 'virtio-blk-pci,drive=disk,id=blk0',
    ],
  });

  assert.equal((await guest.check('basename $(readlink /sys/block/vda/device/driver)')).trim(), 'virtio_blk');
  assert.equal(Number(await guest.check('cat /sys/block/vda/size')) * 512, 8 * MiB);

  // Host -> guest: the first 4 MiB, read with O_DIRECT so the bytes come from the device.
  const read = await guest.check(`dd if=/dev/vda bs=64k count=64 iflag=direct 2>/dev/null | sha256sum`);
  assert.equal(read.split(' ')[0], sha256(hostPattern));

  // Guest -> host: a guest-made pattern into the second 4 MiB, flushed, then compared on both sides.
  const written = await guest.check([
    'head -c 4194304 /dev/urandom > /tmp/pattern',
    'dd if=/tmp/pattern of=/dev/vda bs=64k seek=64 oflag=direct conv=fsync 2>/dev/null',
    'sha256sum < /tmp/pattern',
  ].join(' && '));
  const guestHash = written.split(' ')[0];
  assert.equal(sha256(readFileSync(image).subarray(4 * MiB)), guestHash, 'the image file holds what the guest wrote');
  const reread = await guest.check('echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=64k skip=64 count=64 iflag=direct 2>/dev/null | sha256sum');
  assert.equal(reread.split(' ')[0], guestHash, 'the guest reads back what it wrote');
});
