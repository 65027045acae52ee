/**
 * The lab `npm run lab:setup` builds (docs/lab.md): a QEMU new enough for every paravirt device,
 * run in a Debian chroot when the host's is older, and a guest kernel with an initramfs. It is
 * recorded in lab.json under PARAVIRT_LAB_DIR (default /var/cache/paravirt-lab); `paravirt run`
 * boots it when given no QEMU or kernel of the user's own.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const DEFAULT_LAB_DIR = '/var/cache/paravirt-lab';

/** What lab:setup recorded. Paths are host paths. */
export interface LabManifest {
  format: 1;
  mirror: string;
  qemu: {
    /** Absolute path of qemu-system-x86_64: inside `chroot` when that is set. */
    binary: string;
    /** Run the binary under `chroot <chroot>`; undefined when the host's own QEMU is new enough. */
    chroot?: string;
    version: string;
  };
  /** vmlinuz is Debian's bzImage; vmlinux the ELF inside it, which QEMU boots through PVH. */
  kernel: { release: string; package: string; vmlinuz: string; vmlinux: string };
  initramfs: string;
  /** Kernel modules packed into the initramfs (module names, dependencies included). */
  modules: string[];
}

/** The lab is not set up here; the message says how to set it up. */
export class LabMissingError extends Error {
  override name = 'LabMissingError';
}

/** The lab's directory: PARAVIRT_LAB_DIR or the default. */
export function labDir(): string {
  return resolve(process.env.PARAVIRT_LAB_DIR || DEFAULT_LAB_DIR);
}

/** lab.json of the lab in `dir`, as lab:setup wrote it last. */
export function readLabManifest(dir: string = labDir()): LabManifest {
  const path = join(dir, 'lab.json');
  if (!existsSync(path)) throw new LabMissingError(`the lab is not set up (${path} does not exist); run \`sudo npm run lab:setup\``);
  const manifest = JSON.parse(readFileSync(path, 'utf8')) as LabManifest;
  if (manifest.format !== 1) throw new LabMissingError(`${path} has an unknown format; run \`sudo npm run lab:setup\` again`);
  return manifest;
}
