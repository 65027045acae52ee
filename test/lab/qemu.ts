/**
 * Where the lab lives and how to start the QEMU it provides.
 *
 * `npm run lab:setup` writes everything under one cache directory outside the clone
 * (PARAVIRT_LAB_DIR, default /var/cache/paravirt-lab) and records what it built in lab.json.
 * This module only reads that manifest: tests never build anything.
 */
import { initramfsKey } from '../../scripts/lab/initramfs.ts';
import { existsSync } from 'node:fs';
import { DEFAULT_LAB_DIR, LabMissingError, labDir, readLabManifest, type LabManifest } from '../../src/run/lab.ts';
import { dirname, join, relative, resolve, isAbsolute } from 'node:path';
import { execFileSync } from 'node:child_process';

export { DEFAULT_LAB_DIR, LabMissingError, type LabManifest };

/** The first QEMU release with every device model the peers and guest tests rely on. */
export const MIN_QEMU = '10.1';

export interface LabPaths {
  /** The cache directory (PARAVIRT_LAB_DIR). */
  dir: string;
  /** lab.json: what lab:setup built, written last so its presence means "complete". */
  manifest: string;
  /** A Debian trixie chroot holding QEMU from trixie-backports and the apt state for the guest kernel. */
  rootfs: string;
  /** Guest kernels and initramfs images; inside rootfs so a chrooted QEMU can open them. */
  guestDir: string;
  /** Per-run directories for sockets and disk images; inside rootfs for the same reason. */
  shareDir: string;
  /** Console logs of guests, kept after they stop so a failed boot can be read afterwards. */
  logDir: string;
}

export function labPaths(): LabPaths {
  const dir = labDir();
  const rootfs = join(dir, 'rootfs-trixie');
  return {
    dir,
    manifest: join(dir, 'lab.json'),
    rootfs,
    guestDir: join(rootfs, 'srv/paravirt/guest'),
    shareDir: join(rootfs, 'srv/paravirt/share'),
    logDir: join(dir, 'logs'),
  };
}

export function readManifest(paths: LabPaths = labPaths()): LabManifest {
  const manifest = readLabManifest(paths.dir);
  // Initramfs images are kept side by side, named by the guest scripts they were built from: a
  // checkout whose image was built before uses it, whichever checkout set the lab up last.
  const own = join(dirname(manifest.initramfs), `initramfs-${manifest.kernel.release}-${initramfsKey(dirname(manifest.kernel.vmlinux), manifest.kernel.release)}.cpio`);
  return existsSync(own) ? { ...manifest, initramfs: own } : manifest;
}

/** How to run one QEMU program. */
export interface QemuCommand {
  /** The command line prefix: append QEMU options and spawn argv[0] with the rest. */
  argv: string[];
  /** "11.1.0", as printed by --version. */
  version: string;
  /** The same file as QEMU sees it (QEMU may run in a chroot); throws if QEMU cannot see it. */
  toQemuPath(hostPath: string): string;
  /** A host directory QEMU can see, for sockets and images. */
  shareDir: string;
  /** The command line prefix for another program from the same QEMU build (qemu-img, qemu-storage-daemon). */
  tool(name: string): string[];
}

/** Makes a QemuCommand for binaries under `root` (a chroot), or the host itself when root is undefined. */
function commandFor(binary: string, version: string, root: string | undefined, shareDir: string): QemuCommand {
  const prefix = root === undefined ? [] : ['chroot', root];
  const binDir = binary.slice(0, binary.lastIndexOf('/'));
  return {
    argv: [...prefix, binary],
    version,
    shareDir,
    tool: (name) => [...prefix, `${binDir}/${name}`],
    toQemuPath(hostPath) {
      const abs = resolve(hostPath);
      if (root === undefined) return abs;
      const rel = relative(root, abs);
      if (rel.startsWith('..') || isAbsolute(rel)) {
        throw new Error(`${abs} is outside ${root}, so the chrooted QEMU cannot open it; put it under ${shareDir}`);
      }
      return '/' + rel;
    },
  };
}

/** QEMU >= MIN_QEMU as lab:setup found it: the host's own if new enough, else the trixie-backports one in a chroot. */
export function qemuCommand(): QemuCommand {
  const paths = labPaths();
  const { qemu } = readManifest(paths);
  return commandFor(qemu.binary, qemu.version, qemu.chroot, paths.shareDir);
}

/** The host distribution's QEMU (7.2 on Debian 12), for peers that must also work with older releases. */
export function systemQemuCommand(): QemuCommand {
  const binary = '/usr/bin/qemu-system-x86_64';
  if (!existsSync(binary)) throw new LabMissingError(`${binary} is missing; run \`sudo npm run lab:setup\``);
  const paths = labPaths();
  return commandFor(binary, qemuVersion([binary]), undefined, paths.shareDir);
}

/** Runs `<argv> --version` and returns "X.Y.Z". */
export function qemuVersion(argv: string[]): string {
  const out = execFileSync(argv[0], [...argv.slice(1), '--version'], { encoding: 'utf8' });
  const match = /version (\d+\.\d+(?:\.\d+)?)/.exec(out);
  if (!match) throw new Error(`cannot read a version from \`${argv.join(' ')} --version\`: ${out.split('\n')[0]}`);
  return match[1];
}

/** Compares dotted versions numerically: negative, zero or positive like a sort comparator. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
