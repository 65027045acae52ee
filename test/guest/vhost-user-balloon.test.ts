/**
 * A stock Linux guest's virtio_balloon against paravirt's BalloonDevice, served over vhost-user
 * through QEMU's generic vhost-user-test-device-pci. Memory the guest gives up is measured as the
 * host sees it: the blocks allocated to QEMU's guest-RAM memfd, read through /proc/<qemu>/fd.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readdirSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { BalloonDevice } from '../../src/devices/balloon/device.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { bootGuest, shareDir, type Guest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;
const GUEST_MiB = 512;

/**
 * Bytes the host has allocated to the guest's RAM: the blocks of the memfd QEMU made for
 * `-object memory-backend-memfd` (the one memfd of the guest's RAM size), seen through /proc.
 */
function ramAllocated(guest: Guest): number {
  const fds = `/proc/${guest.pid}/fd`;
  for (const fd of readdirSync(fds)) {
    const path = join(fds, fd);
    let target: string;
    try {
      target = readlinkSync(path);
    } catch {
      continue; // closed while listing
    }
    if (!target.startsWith('/memfd:')) continue;
    const st = statSync(path);
    if (st.size === GUEST_MiB * MiB) return st.blocks * 512;
  }
  throw new Error(`QEMU (pid ${guest.pid}) holds no memfd of ${GUEST_MiB} MiB`);
}

async function untilActual(device: BalloonDevice, bytes: number): Promise<void> {
  while (device.status().actualBytes !== bytes) await once(device, 'actual');
}

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

/** The guest writes `mib` MiB into a RAM file system and deletes it: the pages are touched, then free. */
async function touch(guest: Guest, mib: number): Promise<void> {
  await guest.check(`mkdir -p /mnt/fill && mount -t tmpfs -o size=${mib + 16}M fill /mnt/fill 2>/dev/null; ` +
    `dd if=/dev/zero of=/mnt/fill/f bs=1M count=${mib} 2>/dev/null && rm /mnt/fill/f`, { timeoutMs: 120_000 });
}

function meminfoKiB(text: string, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  assert.ok(m, `/proc/meminfo has ${field}`);
  return Number(m[1]);
}

test('vhost-user balloon: inflating releases the guest memory on the host, deflating gives it back, stats match /proc/meminfo', async (t) => {
  if (!requireLab(t)) return;
  // Without free page reporting, so that only the balloon moves host memory in this test.
  const device = new BalloonDevice({ reporting: false });
  const guest = await bootWithBalloon(t, 'vu-balloon', device);

  await touch(guest, 400);
  const touched = ramAllocated(guest);
  t.diagnostic(`host memory of the guest after touching 400 MiB: ${(touched / MiB).toFixed(1)} MiB`);
  assert.ok(touched >= 400 * MiB, `the memfd holds ${touched} bytes after the guest touched 400 MiB`);

  device.setTarget(256 * MiB);
  await untilActual(device, 256 * MiB);
  const inflated = ramAllocated(guest);
  t.diagnostic(`after inflating 256 MiB: ${(inflated / MiB).toFixed(1)} MiB (released ${((touched - inflated) / MiB).toFixed(1)} MiB)`);
  assert.ok(touched - inflated >= 240 * MiB, `inflating 256 MiB released ${touched - inflated} bytes on the host`);
  assert.equal(device.status().inflatedBytes, 256 * MiB);

  device.setTarget(0);
  await untilActual(device, 0);
  assert.equal(device.status().inflatedBytes, 0);
  // The guest has the memory again: it can fill it, and the host allocates it again as it does.
  await touch(guest, 400);
  const deflated = ramAllocated(guest);
  t.diagnostic(`after deflating and touching 400 MiB again: ${(deflated / MiB).toFixed(1)} MiB`);
  assert.ok(deflated - inflated >= 240 * MiB, `the guest's renewed use allocated ${deflated - inflated} bytes on the host again`);

  // Statistics: the guest answers a request with fresh numbers; its free memory agrees with
  // /proc/meminfo read just after. Between the two samples the guest runs one `cat` through the
  // agent (a fork, an exec and a pipe: well under 16 MiB), and nothing else allocates.
  const fresh = once(device, 'stats');
  assert.ok(device.requestStats(), 'the guest posted its statistics buffer at start');
  const [stats] = await fresh;
  const meminfo = await guest.check('cat /proc/meminfo');
  const free = stats.values['free-memory'];
  assert.equal(free.unit, 'bytes');
  const memFree = meminfoKiB(meminfo, 'MemFree') * 1024;
  t.diagnostic(`stats free-memory ${(free.value / MiB).toFixed(1)} MiB, /proc/meminfo MemFree ${(memFree / MiB).toFixed(1)} MiB`);
  assert.ok(Math.abs(free.value - memFree) <= 16 * MiB, `stats say ${free.value} bytes free, /proc/meminfo ${memFree}`);
  assert.equal(stats.values['total-memory'].value, meminfoKiB(meminfo, 'MemTotal') * 1024);
});

test('vhost-user balloon: free page reporting releases memory the guest frees, without a target change', async (t) => {
  if (!requireLab(t)) return;
  const device = new BalloonDevice();
  const guest = await bootWithBalloon(t, 'vu-balloon-report', device);
  // Fill without freeing first, to see the host's peak: reporting cannot release pages in use.
  await guest.check('mkdir -p /mnt/fill && mount -t tmpfs -o size=416M fill /mnt/fill && dd if=/dev/zero of=/mnt/fill/f bs=1M count=400 2>/dev/null', { timeoutMs: 120_000 });
  const touched = ramAllocated(guest);
  t.diagnostic(`host memory of the guest holding 400 MiB: ${(touched / MiB).toFixed(1)} MiB`);
  assert.ok(touched >= 400 * MiB);
  await guest.check('rm /mnt/fill/f');
  // Linux reports free 2 MiB blocks a few seconds after they are freed; each report wakes this loop.
  while (ramAllocated(guest) > touched - 300 * MiB) await once(device, 'reported');
  const after = ramAllocated(guest);
  t.diagnostic(`after the guest freed it: ${(after / MiB).toFixed(1)} MiB (released ${((touched - after) / MiB).toFixed(1)} MiB); reported in all ${(device.counters.snapshot().device.reportedBytes / MiB).toFixed(1)} MiB`);
  assert.equal(device.status().targetBytes, 0, 'the target never moved');
  assert.equal(device.status().actualBytes, 0);
});
