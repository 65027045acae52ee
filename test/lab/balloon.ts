/**
 * A stock Linux guest's virtio_balloon against `paravirt serve balloon`, run and controlled as a
 * user does (`paravirt balloon --control`), over either transport: vhost-user through QEMU's
 * generic vhost-user-test-device-pci, or vfio-user through vfio-user-pci. Memory the guest gives
 * up is measured as the host sees it: the blocks allocated to QEMU's guest-RAM memfd, read
 * through /proc/<qemu>/fd.
 */
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { BalloonStats, BalloonStatus } from '../../src/devices/balloon/device.ts';
import { startGuest, type Guest } from './guest.ts';
import { PeerProcess } from './peer-process.ts';
import { qemuCommand } from './qemu.ts';

export const MiB = 1024 * 1024;
const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));

/**
 * Bytes the host has allocated to the guest's RAM: the blocks of the memfd QEMU made for
 * `-object memory-backend-memfd` (the one memfd of the guest's RAM size), seen through /proc.
 */
export function ramAllocated(guest: Guest, ramBytes: number): number {
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
    if (st.size === ramBytes) return st.blocks * 512;
  }
  throw new Error(`QEMU (pid ${guest.pid}) holds no memfd of ${ramBytes} bytes`);
}

/** The guest writes `mib` MiB into a RAM file system and deletes it: the pages are touched, then free. */
export async function touch(guest: Guest, mib: number): Promise<void> {
  await guest.check(`mkdir -p /mnt/fill && mount -t tmpfs -o size=${mib + 16}M fill /mnt/fill 2>/dev/null; ` +
    `dd if=/dev/zero of=/mnt/fill/f bs=1M count=${mib} 2>/dev/null && rm /mnt/fill/f`, { timeoutMs: 120_000 });
}

export function meminfoKiB(text: string, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  assert.ok(m, `/proc/meminfo has ${field}`);
  return Number(m[1]);
}

/** `paravirt balloon --control CONTROL ARGS...`, as a user types it; its output is one JSON value. */
async function balloonCommand(control: string, ...args: string[]): Promise<unknown> {
  const { stdout } = await promisify(execFile)(process.execPath, [PARAVIRT, 'balloon', '--control', control, ...args]);
  return JSON.parse(stdout) as unknown;
}

/**
 * The user's path end to end, in a `guestMiB` guest: `paravirt serve balloon` (statistics every
 * second, without free page reporting so that only the balloon moves host memory), `paravirt
 * balloon set 256M --wait` releases at least 240 MiB of the memfd, `set 0 --wait` gives it back
 * for the guest to use again, and `stats` agrees with the guest's /proc/meminfo.
 */
export async function serveBalloonEndToEnd(t: TestContext, transport: 'vhost-user' | 'vfio-user', guestMiB: number): Promise<void> {
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, `${transport}-balloon-`));
  const socketPath = join(dir, 'balloon.sock');
  const control = join(dir, 'balloon.ctl');
  const backend = new PeerProcess(
    `paravirt serve balloon --transport ${transport}`,
    [
      process.execPath, PARAVIRT, 'serve', 'balloon', '--transport', transport, '--socket-path', socketPath,
      '--control', control, '--stats-interval', '1', '--free-page-reporting', 'off',
    ],
    { textStdout: true },
  );
  t.after(async () => {
    await backend.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await backend.waitForOutput(transport === 'vfio-user' ? /vfio-user server listening/ : /vhost-user back-end listening/, 0, 'starting to listen');
  const socket = qemu.toQemuPath(socketPath);
  const devices = transport === 'vfio-user'
    ? ['-device', JSON.stringify({ driver: 'vfio-user-pci', socket: { path: socket, type: 'unix' } })]
    : ['-chardev', `socket,id=vub,path=${socket}`, '-device', 'vhost-user-test-device-pci,chardev=vub,virtio-id=5,num_vqs=4,config_size=16'];
  const guest = await startGuest(t, { name: `${transport}-balloon`, memoryMiB: guestMiB, devices });
  assert.equal((await guest.check('basename $(readlink /sys/bus/virtio/drivers/virtio_balloon/virtio*/driver)')).trim(), 'virtio_balloon');
  const ram = (): number => ramAllocated(guest, guestMiB * MiB);

  await touch(guest, 400);
  const touched = ram();
  t.diagnostic(`host memory of the guest after touching 400 MiB: ${(touched / MiB).toFixed(1)} MiB`);
  assert.ok(touched >= 400 * MiB, `the memfd holds ${touched} bytes after the guest touched 400 MiB`);

  // --wait returns once the guest's actual has reached the target (seconds under TCG).
  const inflating = (await balloonCommand(control, 'set', '256M', '--wait', '60')) as BalloonStatus;
  assert.deepEqual(inflating, { targetBytes: 256 * MiB, actualBytes: 256 * MiB, inflatedBytes: 256 * MiB, guestRamBytes: guestMiB * MiB });
  const inflated = ram();
  t.diagnostic(`after inflating 256 MiB: ${(inflated / MiB).toFixed(1)} MiB (released ${((touched - inflated) / MiB).toFixed(1)} MiB)`);
  assert.ok(touched - inflated >= 240 * MiB, `inflating 256 MiB released ${touched - inflated} bytes on the host`);

  const deflating = (await balloonCommand(control, 'set', '0', '--wait', '60')) as BalloonStatus;
  assert.equal(deflating.actualBytes, 0);
  assert.equal(deflating.inflatedBytes, 0);
  // The guest has the memory again: it can fill it, and the host allocates it again as it does.
  await touch(guest, 400);
  const deflated = ram();
  t.diagnostic(`after deflating and touching 400 MiB again: ${(deflated / MiB).toFixed(1)} MiB`);
  assert.ok(deflated - inflated >= 240 * MiB, `the guest's renewed use allocated ${deflated - inflated} bytes on the host again`);

  // Statistics: the back-end asks every second; the first sample taken after the guest went idle
  // is compared with /proc/meminfo read just after. Between the two the guest runs one `cat`
  // through the agent (a fork, an exec and a pipe: well under 16 MiB), and nothing else allocates.
  const idle = Date.now();
  let stats: BalloonStats | null = null;
  // Each command takes a good part of a second: 60 of them span many requests of the back-end.
  for (let tries = 0; tries < 60 && (stats === null || stats.receivedAt <= idle); tries++) stats = (await balloonCommand(control, 'stats')) as BalloonStats | null;
  assert.ok(stats !== null && stats.receivedAt > idle, `no statistics sent after ${new Date(idle).toISOString()}: ${JSON.stringify(stats)}`);
  const meminfo = await guest.check('cat /proc/meminfo');
  const free = stats.values['free-memory'];
  assert.equal(free.unit, 'bytes');
  const memFree = meminfoKiB(meminfo, 'MemFree') * 1024;
  t.diagnostic(`stats free-memory ${(free.value / MiB).toFixed(1)} MiB, /proc/meminfo MemFree ${(memFree / MiB).toFixed(1)} MiB`);
  assert.ok(Math.abs(free.value - memFree) <= 16 * MiB, `stats say ${free.value} bytes free, /proc/meminfo ${memFree}`);
  assert.equal(stats.values['total-memory'].value, meminfoKiB(meminfo, 'MemTotal') * 1024);

  const exit = await backend.stop();
  assert.equal(exit.code, 0, 'the back-end exits cleanly on SIGTERM');
}
