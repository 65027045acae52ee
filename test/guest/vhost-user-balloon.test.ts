/**
 * A stock Linux guest's virtio_balloon against paravirt's balloon, served over vhost-user through
 * QEMU's generic vhost-user-test-device-pci: first as a user runs it (`paravirt serve balloon`,
 * driven by `paravirt balloon --control`), then in process for free page reporting. Memory the
 * guest gives up is measured as the host sees it: the blocks allocated to QEMU's guest-RAM memfd,
 * read through /proc/<qemu>/fd.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pino from 'pino';
import type { BalloonStats, BalloonStatus } from '../../src/devices/balloon/device.ts';
import { BalloonDevice } from '../../src/devices/balloon/device.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { bootGuest, shareDir, startGuest, type Guest } from '../lab/guest.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;
const GUEST_MiB = 512;
const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));

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

/** `paravirt balloon --control CONTROL ARGS...`, as a user types it; its output is one JSON value. */
async function balloonCommand(control: string, ...args: string[]): Promise<unknown> {
  const { stdout } = await promisify(execFile)(process.execPath, [PARAVIRT, 'balloon', '--control', control, ...args]);
  return JSON.parse(stdout) as unknown;
}

test('`paravirt serve balloon`: `paravirt balloon set` inflates, releasing guest memory on the host, deflating gives it back, `stats` match /proc/meminfo', async (t) => {
  if (!requireLab(t)) return;
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vu-balloon-cli-'));
  const socketPath = join(dir, 'balloon.sock');
  const control = join(dir, 'balloon.ctl');
  // Without free page reporting, so that only the balloon moves host memory in this test.
  const backend = new PeerProcess(
    'paravirt serve balloon',
    [process.execPath, PARAVIRT, 'serve', 'balloon', '--socket-path', socketPath, '--control', control, '--stats-interval', '1', '--free-page-reporting', 'off'],
    { textStdout: true },
  );
  t.after(async () => {
    await backend.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  const guest = await startGuest(t, {
    name: 'vu-balloon-cli',
    memoryMiB: GUEST_MiB,
    devices: [
      '-chardev', `socket,id=vub,path=${qemu.toQemuPath(socketPath)}`,
      '-device', 'vhost-user-test-device-pci,chardev=vub,virtio-id=5,num_vqs=4,config_size=16',
    ],
  });
  assert.equal((await guest.check('basename $(readlink /sys/bus/virtio/drivers/virtio_balloon/virtio*/driver)')).trim(), 'virtio_balloon');

  await touch(guest, 400);
  const touched = ramAllocated(guest);
  t.diagnostic(`host memory of the guest after touching 400 MiB: ${(touched / MiB).toFixed(1)} MiB`);
  assert.ok(touched >= 400 * MiB, `the memfd holds ${touched} bytes after the guest touched 400 MiB`);

  // --wait returns once the guest's actual has reached the target (the guest takes seconds under TCG).
  const inflating = (await balloonCommand(control, 'set', '256M', '--wait', '600')) as BalloonStatus;
  assert.deepEqual(inflating, { targetBytes: 256 * MiB, actualBytes: 256 * MiB, inflatedBytes: 256 * MiB, guestRamBytes: GUEST_MiB * MiB });
  const inflated = ramAllocated(guest);
  t.diagnostic(`after inflating 256 MiB: ${(inflated / MiB).toFixed(1)} MiB (released ${((touched - inflated) / MiB).toFixed(1)} MiB)`);
  assert.ok(touched - inflated >= 240 * MiB, `inflating 256 MiB released ${touched - inflated} bytes on the host`);

  const deflating = (await balloonCommand(control, 'set', '0', '--wait', '600')) as BalloonStatus;
  assert.equal(deflating.actualBytes, 0);
  assert.equal(deflating.inflatedBytes, 0);
  // The guest has the memory again: it can fill it, and the host allocates it again as it does.
  await touch(guest, 400);
  const deflated = ramAllocated(guest);
  t.diagnostic(`after deflating and touching 400 MiB again: ${(deflated / MiB).toFixed(1)} MiB`);
  assert.ok(deflated - inflated >= 240 * MiB, `the guest's renewed use allocated ${deflated - inflated} bytes on the host again`);

  // Statistics: the back-end asks every second; the first sample taken after the guest went idle
  // is compared with /proc/meminfo read just after. Between the two the guest runs one `cat`
  // through the agent (a fork, an exec and a pipe: well under 16 MiB), and nothing else allocates.
  const idle = Date.now();
  let stats = (await balloonCommand(control, 'stats')) as BalloonStats | null;
  while (stats === null || stats.receivedAt <= idle) stats = (await balloonCommand(control, 'stats')) as BalloonStats | null;
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
