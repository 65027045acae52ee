/**
 * A stock Linux guest's virtio_balloon against paravirt's balloon, served over vhost-user through
 * QEMU's generic vhost-user-test-device-pci: as a user runs it (`paravirt serve balloon`, driven by
 * `paravirt balloon --control`), and in process for free page reporting, whose releases it waits
 * for as the device announces them.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { join } from 'node:path';
import pino from 'pino';
import { BalloonDevice } from '../../src/devices/balloon/device.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { MiB, ramAllocated, serveBalloonEndToEnd } from '../lab/balloon.ts';
import { bootGuest, shareDir, type Guest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

const GUEST_MiB = 512;

test('`paravirt serve balloon`: `paravirt balloon set` inflates, releasing guest memory on the host, deflating gives it back, `stats` match /proc/meminfo', async (t) => {
  if (!requireLab(t)) return;
  await serveBalloonEndToEnd(t, 'vhost-user', GUEST_MiB);
});

async function bootWithBalloon(t: TestContext, name: string, device: BalloonDevice): Promise<Guest> {
  const log = pino({ level: process.env.PARAVIRT_LOG ?? 'warn' });
  // The socket must exist before QEMU starts, so it lives in a shared directory of its own.
  const share = shareDir(t, name);
  const socketPath = join(share.dir, 'balloon.sock');
  const server = BackendServer.listen(device, { socketPath }, log);
  let guest: Guest;
  try {
    guest = await bootGuest({
      name,
      memoryMiB: GUEST_MiB,
      devices: [
        '-chardev', `socket,id=vub,path=${share.qemuPath(socketPath)}`,
        '-device', 'vhost-user-test-device-pci,chardev=vub,virtio-id=5,num_vqs=4,config_size=16',
      ],
    });
  } catch (err) {
    await server.close();
    throw err;
  }
  // QEMU goes first: it talks vhost-user synchronously and would wait on a back-end that left.
  t.after(async () => {
    await guest.shutdown();
    await server.close();
  });
  assert.equal((await guest.check('basename $(readlink /sys/bus/virtio/drivers/virtio_balloon/virtio*/driver)')).trim(), 'virtio_balloon');
  return guest;
}

test('vhost-user balloon: free page reporting releases memory the guest frees, without a target change', async (t) => {
  if (!requireLab(t)) return;
  const device = new BalloonDevice();
  const guest = await bootWithBalloon(t, 'vu-balloon-report', device);
  // Fill without freeing first, to see the host's peak: reporting cannot release pages in use.
  await guest.check('mkdir -p /mnt/fill && mount -t tmpfs -o size=416M fill /mnt/fill && dd if=/dev/zero of=/mnt/fill/f bs=1M count=400 2>/dev/null', { timeoutMs: 120_000 });
  const touched = ramAllocated(guest, GUEST_MiB * MiB);
  t.diagnostic(`host memory of the guest holding 400 MiB: ${(touched / MiB).toFixed(1)} MiB`);
  assert.ok(touched >= 400 * MiB);
  await guest.check('rm /mnt/fill/f');
  // Linux reports free 2 MiB blocks a few seconds after they are freed; each report wakes this loop.
  while (ramAllocated(guest, GUEST_MiB * MiB) > touched - 300 * MiB) await once(device, 'reported');
  const after = ramAllocated(guest, GUEST_MiB * MiB);
  t.diagnostic(`after the guest freed it: ${(after / MiB).toFixed(1)} MiB (released ${((touched - after) / MiB).toFixed(1)} MiB); reported in all ${(device.counters.snapshot().device.reportedBytes / MiB).toFixed(1)} MiB`);
  assert.equal(device.status().targetBytes, 0, 'the target never moved');
  assert.equal(device.status().actualBytes, 0);
});
