/**
 * `npm run demo`: a Linux guest under QEMU with a disk and an entropy source that are served by
 * paravirt over vhost-user. Two `paravirt serve` processes are the back-ends; QEMU is the
 * front-end; the guest runs stock virtio drivers and never knows the devices are TypeScript.
 *
 * Sets the lab up first when it is missing (that needs root and a network connection).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootGuest, type Guest } from '../test/lab/guest.ts';
import { qemuCommand } from '../test/lab/qemu.ts';
import { labUnavailable } from '../test/lab/require.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PARAVIRT = join(ROOT, 'bin/paravirt.js');
const DISK_SIZE = 256 * 1024 * 1024;

function say(text: string): void {
  process.stdout.write(`\n\x1b[1m== ${text}\x1b[0m\n`);
}

/** Start `paravirt serve ...` and resolve once it logs that it listens. */
function serve(args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [PARAVIRT, 'serve', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let seen = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      seen += chunk;
      if (seen.includes('vhost-user back-end listening')) resolve(child);
    });
    child.once('exit', (code) => reject(new Error(`paravirt serve ${args[0]} exited with code ${code} before listening`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  await exited;
}

/** Run `script` in the guest, echoing it and its output. */
async function run(guest: Guest, script: string): Promise<string> {
  process.stdout.write(`guest# ${script}\n`);
  const out = await guest.check(script, { timeoutMs: 120_000 });
  if (out.trim() !== '') process.stdout.write(`${out.trimEnd()}\n`);
  return out;
}

async function main(): Promise<void> {
  if (labUnavailable() !== undefined) {
    say('Setting up the lab (QEMU, a guest kernel and initramfs) — once');
    execFileSync('npm', ['run', 'lab:setup'], { cwd: ROOT, stdio: 'inherit' });
  }
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'demo-'));
  const image = join(dir, 'disk.img');
  writeFileSync(image, new Uint8Array(0));
  truncateSync(image, DISK_SIZE);
  const blkSocket = join(dir, 'blk.sock');
  const rngSocket = join(dir, 'rng.sock');

  const backends: ChildProcess[] = [];
  let guest: Guest | undefined;
  try {
    say(`Starting the back-ends: paravirt serve blk (${image}) and paravirt serve rng`);
    backends.push(await serve(['blk', '--socket-path', blkSocket, '--image', image]));
    backends.push(await serve(['rng', '--socket-path', rngSocket]));

    say(`Booting a Linux guest under QEMU ${qemu.version} with vhost-user-blk-pci and vhost-user-rng-pci`);
    guest = await bootGuest({
      name: 'demo',
      devices: [
        '-chardev', `socket,id=blk0,path=${qemu.toQemuPath(blkSocket)}`,
        '-device', 'vhost-user-blk-pci,chardev=blk0,num-queues=1',
        '-chardev', `socket,id=rng0,path=${qemu.toQemuPath(rngSocket)}`,
        '-device', 'vhost-user-rng-pci,chardev=rng0',
      ],
    });
    process.stdout.write(`guest kernel ${guest.release} up in ${guest.bootMs} ms\n`);

    say('The paravirt disk, as the guest sees it');
    await run(guest, 'echo "vda: $(cat /sys/block/vda/size) sectors, cache $(cat /sys/block/vda/queue/write_cache)"; ls -l /sys/block/vda/device/driver');
    say('Make a filesystem on it, mount it, write a file');
    await run(guest, 'mke2fs -q -L paravirt /dev/vda >/dev/null && mount -t ext4 /dev/vda /mnt && df -h /mnt');
    await run(guest, 'dd if=/dev/urandom of=/mnt/data.bin bs=1M count=16 2>/dev/null && ls -l /mnt');
    say('Unmount, drop caches, mount again and read it back');
    const written = (await run(guest, 'sha256sum /mnt/data.bin')).split(' ')[0];
    await run(guest, 'umount /mnt && echo 3 > /proc/sys/vm/drop_caches && mount -t ext4 /dev/vda /mnt');
    const readBack = (await run(guest, 'sha256sum /mnt/data.bin')).split(' ')[0];
    process.stdout.write(readBack === written ? 'checksums match\n' : 'CHECKSUMS DIFFER\n');
    await run(guest, 'umount /mnt');

    say('Random bytes from /dev/hwrng, served by paravirt');
    await run(guest, 'cat /sys/class/misc/hw_random/rng_current; dd if=/dev/hwrng bs=32 count=2 2>/dev/null | od -An -tx1');
    if (readBack !== written) throw new Error('the file read back differs from the file written');
    say('Done');
  } finally {
    await guest?.shutdown();
    for (const b of backends) await stop(b);
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
