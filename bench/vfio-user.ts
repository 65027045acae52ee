/**
 * `npm run bench -- vfio-user`: small-block read latency of one tmpfs image served three ways to
 * the same Linux guest in one run: by paravirt over vfio-user (the guest's virtio_pci drives
 * paravirt's own PCI function), by paravirt over vhost-user (QEMU's vhost-user-blk-pci), and by
 * QEMU's built-in virtio-blk. One dd reads 4 KiB blocks with O_DIRECT at queue depth 1; rounds
 * alternate the order, each side reports its median, and the ratios to QEMU's built-in device
 * are given. The guest times each run with its own clock. Needs the lab (root).
 */
import { join } from 'node:path';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rmSync } from 'node:fs';
import { bootGuest, type Guest } from '../test/lab/guest.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';
import { qemuCommand } from '../test/lab/qemu.ts';
import { report, step } from './_report.ts';
import { findDisks, guestSeconds, median, round2, tmpfsDir, writeImage } from './vhost-blk.ts';

const BENCH = 'vfio-user';
const BLOCK = 4096;
const READS = 8000;
const ROUNDS = 5;
export const deadlineSeconds = 600;

const repo = dirname(dirname(fileURLToPath(import.meta.url)));

type SideName = 'vfio_user' | 'vhost_user' | 'qemu';
interface Side {
  readonly name: SideName;
  readonly slot: number;
  disk: string;
}

/** `paravirt serve blk --read-only` over `transport`, as a user runs it. */
async function serve(transport: 'vfio-user' | 'vhost-user', image: string, socketPath: string): Promise<PeerProcess> {
  const argv = [process.execPath, join(repo, 'bin/paravirt.js'), 'serve', 'blk', '--transport', transport, '--socket-path', socketPath, '--image', image, '--read-only'];
  const peer = new PeerProcess(`paravirt serve blk --transport ${transport}`, argv, { textStdout: true, cleanup: () => rmSync(socketPath, { force: true }) });
  await peer.waitForOutput(/listening/);
  return peer;
}

export async function main(): Promise<void> {
  const qemu = qemuCommand();
  const tmp = tmpfsDir(qemu);
  const peers: PeerProcess[] = [];
  let guest: Guest | undefined;
  try {
    const image = join(tmp.dir, 'disk.img');
    step('writing the image');
    writeImage(image);
    step('starting paravirt serve blk over vfio-user and over vhost-user');
    peers.push(await serve('vfio-user', image, join(tmp.dir, 'vfu.sock')));
    peers.push(await serve('vhost-user', image, join(tmp.dir, 'vhu.sock')));
    const sides: Side[] = [
      { name: 'vfio_user', slot: 0x10, disk: '' },
      { name: 'vhost_user', slot: 0x11, disk: '' },
      { name: 'qemu', slot: 0x12, disk: '' },
    ];
    const vfu = JSON.stringify({ driver: 'vfio-user-pci', addr: '0x10', socket: { path: qemu.toQemuPath(join(tmp.qemuDir, 'vfu.sock')), type: 'unix' } });
    step('booting the guest');
    guest = await bootGuest({
      name: 'bench-vfio-user',
      devices: [
        '-device', vfu,
        '-chardev', `socket,id=vhu,path=${qemu.toQemuPath(join(tmp.qemuDir, 'vhu.sock'))}`,
        '-device', 'vhost-user-blk-pci,chardev=vhu,num-queues=1,addr=0x11',
        '-blockdev', `driver=file,node-name=img,filename=${qemu.toQemuPath(join(tmp.qemuDir, 'disk.img'))},read-only=on`,
        '-device', 'virtio-blk-pci,drive=img,num-queues=1,addr=0x12',
      ],
    });
    step('finding the disks in the guest');
    await findDisks(guest, sides);
    const script = (disk: string): string => `dd if=/dev/${disk} of=/dev/null bs=${BLOCK} count=${READS} iflag=direct 2>/dev/null`;
    for (const side of sides) {
      step(`warming up ${side.name}`);
      await guestSeconds(guest, script(side.disk));
    }
    const iops = new Map<SideName, number[]>();
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? sides : [...sides].reverse();
      for (const side of order) {
        step(`measuring ${side.name}, round ${round + 1} of ${ROUNDS}`);
        const seconds = await guestSeconds(guest, script(side.disk));
        iops.set(side.name, [...(iops.get(side.name) ?? []), READS / seconds]);
      }
    }
    const context = { qemu: qemu.version, guest: guest.release, reads: READS, rounds: ROUNDS, image: 'tmpfs' };
    const medians = new Map<SideName, number>();
    for (const side of sides) {
      const runs = iops.get(side.name) ?? [];
      medians.set(side.name, median(runs));
      report(BENCH, `qd1_read_4k_iops_${side.name}`, Math.round(median(runs)), 'IOPS', { runs: runs.map(Math.round), ...context });
    }
    const q = medians.get('qemu')!;
    report(BENCH, 'ratio_vfio_user_over_qemu', round2(medians.get('vfio_user')! / q), 'x');
    report(BENCH, 'ratio_vhost_user_over_qemu', round2(medians.get('vhost_user')! / q), 'x');
    report(BENCH, 'ratio_vfio_user_over_vhost_user', round2(medians.get('vfio_user')! / medians.get('vhost_user')!), 'x');
    step('shutting the guest down');
    await guest.shutdown();
    guest = undefined;
  } finally {
    step('shutting down what is left');
    await guest?.shutdown();
    for (const peer of peers.reverse()) await peer.stop();
    tmp.remove();
  }
}
