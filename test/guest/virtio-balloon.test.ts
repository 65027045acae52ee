import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startGuest, type Guest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;

async function memTotalKiB(guest: Guest): Promise<number> {
  return Number(/^MemTotal:\s+(\d+) kB/m.exec(await guest.check('cat /proc/meminfo'))?.[1]);
}

/** Sets the balloon target and waits until QEMU reports the guest has reached it. */
async function balloonTo(guest: Guest, bytes: number): Promise<void> {
  await guest.qmp('balloon', { value: bytes });
  for (;;) {
    const { actual } = (await guest.qmp('query-balloon')) as { actual: number };
    if (actual === bytes) return;
    await guest.nextEvent('BALLOON_CHANGE');
  }
}

test('virtio-balloon: the guest gives memory back to the host and takes it again', async (t) => {
  if (!requireLab(t)) return;
  const guest = await startGuest(t, { name: 'virtio-balloon', memoryMiB: 512, devices: ['-device', 'virtio-balloon-pci,id=balloon0'] });
  assert.equal((await guest.check('basename $(readlink /sys/bus/virtio/drivers/virtio_balloon/virtio*/driver)')).trim(), 'virtio_balloon');
  assert.equal(((await guest.qmp('query-balloon')) as { actual: number }).actual, 512 * MiB);
  const before = await memTotalKiB(guest);

  await balloonTo(guest, 256 * MiB);
  const inflated = await memTotalKiB(guest);
  // Inflated pages leave the guest's managed memory (no DEFLATE_ON_OOM), so MemTotal drops by the balloon size.
  assert.equal(before - inflated, 256 * 1024);

  await balloonTo(guest, 512 * MiB);
  assert.equal(await memTotalKiB(guest), before);
});
