/**
 * `npm run bench -- scsi`: 4 KiB O_DIRECT reads by one Linux guest from the same image in tmpfs
 * through three disks at once: paravirt's virtio-scsi controller (`paravirt serve scsi`,
 * vhost-user-scsi-pci), paravirt's virtio-blk (`paravirt serve blk`, vhost-user-blk-pci), and
 * QEMU's built-in virtio-scsi-pci with a scsi-hd. Rounds alternate between the three; each side
 * reports its median IOPS and the ratio to QEMU's built-in virtio-scsi. The guest times each run
 * with its own clock (/proc/uptime). Needs the lab (root).
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootGuest, type Guest } from '../test/lab/guest.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';
import { qemuCommand } from '../test/lab/qemu.ts';
import { report, step } from './_report.ts';
import { guestSeconds, median, tmpfsDir, writeImage } from './vhost-blk.ts';

const BENCH = 'scsi';
const BLOCK = 4096;
const READS = 4000;
/** Runs per side; odd, so the median is one run. */
const ROUNDS = 5;
export const deadlineSeconds = 600;

const repo = dirname(dirname(fileURLToPath(import.meta.url)));

type SideName = 'paravirt-scsi' | 'paravirt-blk' | 'qemu-virtio-scsi';

async function serve(kind: 'scsi' | 'blk', image: string, socketPath: string): Promise<PeerProcess> {
  const disk = kind === 'scsi' ? ['--lun', `${image},ro`] : ['--image', image, '--read-only'];
  const peer = new PeerProcess(`paravirt serve ${kind}`, [process.execPath, join(repo, 'bin/paravirt.js'), 'serve', kind, '--socket-path', socketPath, ...disk], { textStdout: true });
  await peer.waitForOutput(/back-end listening/);
  return peer;
}

/** The guest's disk of each side: vda for blk, the sd disks told apart by INQUIRY vendor. */
async function findDisks(guest: Guest): Promise<Record<SideName, string>> {
  await guest.check('for i in $(seq 300); do [ $(ls -d /sys/block/sd* 2>/dev/null | wc -l) -ge 2 ] && [ -b /dev/vda ] && exit 0; sleep 0.1; done; exit 1', { timeoutMs: 60_000 });
  const lines = (await guest.check('for d in /sys/block/sd*; do echo ${d##*/} $(cat $d/device/vendor); done')).trim().split('\n');
  const byVendor = (vendor: string): string => {
    const line = lines.find((l) => l.split(' ')[1] === vendor);
    if (line === undefined) throw new Error(`no guest disk from vendor ${vendor}: ${lines.join('; ')}`);
    return line.split(' ')[0];
  };
  return { 'paravirt-scsi': byVendor('PARAVIRT'), 'paravirt-blk': 'vda', 'qemu-virtio-scsi': byVendor('QEMU') };
}

export async function main(): Promise<void> {
  const qemu = qemuCommand();
  const tmp = tmpfsDir(qemu);
  const peers: PeerProcess[] = [];
  let guest: Guest | undefined;
  try {
    step('writing the image in tmpfs');
    const image = join(tmp.dir, 'disk.img');
    writeImage(image);
    step('starting paravirt serve scsi and blk');
    peers.push(await serve('scsi', image, join(tmp.dir, 'scsi.sock')), await serve('blk', image, join(tmp.dir, 'blk.sock')));
    // The same tmpfs files as the chrooted QEMU reaches them, through the bind mount.
    const scsiSock = join(tmp.qemuDir, 'scsi.sock');
    const blkSock = join(tmp.qemuDir, 'blk.sock');
    step('booting the guest');
    guest = await bootGuest({
      name: 'bench-scsi',
      devices: [
        '-chardev', `socket,id=vuscsi,path=${qemu.toQemuPath(scsiSock)}`,
        '-device', 'vhost-user-scsi-pci,chardev=vuscsi,num_queues=1',
        '-chardev', `socket,id=vublk,path=${qemu.toQemuPath(blkSock)}`,
        '-device', 'vhost-user-blk-pci,chardev=vublk,num-queues=1',
        '-blockdev', `driver=file,node-name=img,filename=${qemu.toQemuPath(join(tmp.qemuDir, 'disk.img'))},read-only=on,cache.direct=off`,
        '-device', 'virtio-scsi-pci,id=qscsi,num_queues=1',
        '-device', 'scsi-hd,bus=qscsi.0,drive=img,scsi-id=0,lun=0',
      ],
    });
    step('finding the disks in the guest');
    const disks = await findDisks(guest);
    const script = (disk: string): string => `dd if=/dev/${disk} of=/dev/null bs=${BLOCK} count=${READS} iflag=direct 2>/dev/null`;
    const sides = Object.keys(disks) as SideName[];
    for (const side of sides) await guestSeconds(guest, script(disks[side])); // warm-up, unmeasured
    const runs: Record<SideName, number[]> = { 'paravirt-scsi': [], 'paravirt-blk': [], 'qemu-virtio-scsi': [] };
    for (let round = 0; round < ROUNDS; round++) {
      step(`round ${round + 1} of ${ROUNDS}`);
      for (const side of sides) runs[side].push(READS / (await guestSeconds(guest, script(disks[side]))));
    }
    const qemuIops = median(runs['qemu-virtio-scsi']);
    for (const side of sides) {
      const iops = median(runs[side]);
      report(BENCH, `${side} qd1 4k read`, Math.round(iops), 'IOPS');
      if (side !== 'qemu-virtio-scsi') report(BENCH, `${side} / qemu-virtio-scsi qd1 4k read`, Math.round((iops / qemuIops) * 100) / 100, 'ratio');
    }
  } finally {
    await guest?.shutdown();
    for (const p of peers) await p.stop();
    tmp.remove();
  }
}
