/**
 * `npm run bench -- vhost-user-blk`: guest-measured throughput of a disk served by paravirt's
 * vhost-user back-end, next to the same disk served by qemu-storage-daemon (QEMU's own C
 * back-end) under the same guest, so the numbers say something about the back-end and not
 * only about the machine. The guest runs under TCG, so absolute numbers are low; the ratio is
 * the point. Needs the lab (root).
 */
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { vhostUserBlkDevice } from '../src/cli/devices.ts';
import { FileBackend } from '../src/devices/blk/file-backend.ts';
import { BackendServer } from '../src/transports/vhost-user/backend-server.ts';
import { bootGuest, type Guest } from '../test/lab/guest.ts';
import { qemuCommand } from '../test/lab/qemu.ts';
import { startStorageDaemon } from '../test/lab/qsd.ts';
import { report } from './_report.ts';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 512 * MiB;

interface Run {
  readonly label: string;
  readonly script: string;
  readonly bytes: number;
}

const RUNS: readonly Run[] = [
  { label: 'seq-write-1M', script: 'dd if=/dev/zero of=/dev/vda bs=1M count=256 oflag=direct', bytes: 256 * MiB },
  { label: 'seq-read-1M', script: 'dd if=/dev/vda of=/dev/null bs=1M count=256 iflag=direct', bytes: 256 * MiB },
  { label: 'write-4k', script: 'dd if=/dev/zero of=/dev/vda bs=4k count=4096 oflag=direct', bytes: 16 * MiB },
  { label: 'read-4k', script: 'dd if=/dev/vda of=/dev/null bs=4k count=4096 iflag=direct', bytes: 16 * MiB },
];

/** Seconds the guest's own clock measured for `script` (/proc/uptime: 10 ms resolution, runs take seconds). */
async function timed(guest: Guest, script: string): Promise<number> {
  const out = await guest.check(`s=$(cut -d' ' -f1 /proc/uptime); ${script} 2>/dev/null; e=$(cut -d' ' -f1 /proc/uptime); echo "$s $e"`, {
    timeoutMs: 300_000,
  });
  const [start, end] = out.trim().split(' ').map(Number);
  return end - start;
}

async function measure(backend: string, devices: string[]): Promise<void> {
  const guest = await bootGuest({ name: `bench-${backend}`, devices });
  try {
    for (const run of RUNS) {
      const seconds = await timed(guest, run.script);
      report('vhost-user-blk', `${run.label} ${backend}`, run.bytes / MiB / seconds, 'MiB/s', { seconds });
    }
  } finally {
    await guest.shutdown();
  }
}

export async function main(): Promise<void> {
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'bench-vu-blk-'));
  try {
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(0));
    truncateSync(image, IMAGE_SIZE);
    const chardev = (path: string): string[] => [
      '-chardev', `socket,id=disk,path=${qemu.toQemuPath(path)}`,
      '-device', 'vhost-user-blk-pci,chardev=disk,num-queues=1',
    ];

    const ours = join(dir, 'paravirt.sock');
    const file = await FileBackend.open(image);
    const server = BackendServer.listen(vhostUserBlkDevice(file), { socketPath: ours }, pino({ level: 'warn' }));
    try {
      await measure('paravirt', chardev(ours));
    } finally {
      await server.close();
      await file.close();
    }

    const theirs = join(dir, 'qsd.sock');
    const qsd = await startStorageDaemon({ image, socketPath: theirs, numQueues: 1, writable: true });
    try {
      await measure('qemu-storage-daemon', chardev(theirs));
    } finally {
      await qsd.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
