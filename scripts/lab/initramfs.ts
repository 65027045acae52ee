/**
 * The guest's initramfs: static busybox, the virtio modules (decompressed, because busybox's
 * insmod hands the kernel plain ELF), and the init, hotplug and agent scripts from ./guest/.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BUSYBOX = '/bin/busybox';
const GUEST_FILES = join(dirname(fileURLToPath(import.meta.url)), 'guest');

/**
 * Modules for every virtio device type Linux drives, plus what their devices need to be useful
 * (sd_mod for virtio-scsi disks, ext4 to mount a filesystem). Names missing from a kernel are
 * skipped, so the list can name drivers newer kernels add.
 */
export const WANTED_MODULES = [
  'virtio_blk', 'virtio_net', 'virtio_scsi', 'sd_mod', 'virtio_balloon', 'virtio_rng',
  'virtio_console', 'virtio_gpu', 'virtio_input', 'evdev', 'vmw_vsock_virtio_transport',
  'virtiofs', '9pnet_virtio', '9p', 'virtio_crypto', 'virtio_mem', 'virtio_pmem', 'nd_pmem',
  'virtio_snd', 'virtio_rtc', 'virtio_iommu', 'virtio_mmio', 'virtio_dma_buf', 'ext4', 'qxl',
];

/** The name the kernel knows a module by: file name without suffixes, dashes as underscores. */
function moduleName(path: string): string {
  return basename(path).replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
}

interface ModuleDep { path: string; deps: string[] }

function readModulesDep(modulesDir: string): Map<string, ModuleDep> {
  const byName = new Map<string, ModuleDep>();
  for (const line of readFileSync(join(modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const path = line.slice(0, colon);
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    byName.set(moduleName(path), { path, deps });
  }
  return byName;
}

/**
 * Programs built for the guest that busybox lacks (testptp, see setup.ts), kept in the
 * kernel's directory with the modules built for it.
 */
function guestPrograms(kernelDir: string): string[] {
  const dir = join(kernelDir, 'bin');
  return existsSync(dir) ? readdirSync(dir).filter((f) => !f.startsWith('.')).sort().map((f) => join(dir, f)) : [];
}

/** Identifies an initramfs by everything it is made from. */
export function initramfsKey(kernelDir: string, release: string): string {
  const hash = createHash('sha256');
  hash.update(basename(kernelDir));
  // Modules built out of tree (virtio_rtc.ko) are rebuilt in place, so their bytes count.
  const updates = join(kernelDir, 'lib/modules', release, 'updates');
  if (existsSync(updates)) for (const f of readdirSync(updates).sort()) hash.update(f).update(readFileSync(join(updates, f)));
  for (const p of guestPrograms(kernelDir)) hash.update(basename(p)).update(readFileSync(p));
  hash.update(WANTED_MODULES.join(','));
  hash.update(readFileSync(fileURLToPath(import.meta.url)));
  for (const f of readdirSync(GUEST_FILES).sort()) hash.update(f).update(readFileSync(join(GUEST_FILES, f)));
  hash.update(readFileSync(BUSYBOX));
  return hash.digest('hex').slice(0, 12);
}

/**
 * Builds `out` for kernel `release`, whose modules are in kernelDir/lib/modules/RELEASE, and
 * returns the names of the modules packed. The cpio is left uncompressed: QEMU copies it into
 * guest RAM in one go, whereas decompressing it in the guest costs a second of emulated CPU.
 */
export function buildInitramfs(kernelDir: string, release: string, out: string, log: (m: string) => void): string[] {
  const modulesDir = join(kernelDir, 'lib/modules', release);
  const deps = readModulesDep(modulesDir);
  const chosen = new Set<string>();
  const missing: string[] = [];
  for (const name of WANTED_MODULES) {
    const entry = deps.get(name);
    if (!entry) {
      missing.push(name);
      continue;
    }
    chosen.add(entry.path);
    for (const d of entry.deps) chosen.add(d);
  }
  if (missing.length) log(`not modules in this kernel (built in or absent): ${missing.join(' ')}`);

  const stage = mkdtempSync(join(tmpdir(), 'paravirt-initramfs-'));
  try {
    for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'run', 'root', 'etc', 'mnt', 'usr']) mkdirSync(join(stage, d));
    for (const link of ['sbin', 'usr/bin', 'usr/sbin']) symlinkSync(link === 'sbin' ? 'bin' : '../bin', join(stage, link));
    copyFileSync(BUSYBOX, join(stage, 'bin/busybox'));
    chmodSync(join(stage, 'bin/busybox'), 0o755);
    const applets = execFileSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => a && a !== 'busybox');
    for (const a of applets) symlinkSync('busybox', join(stage, 'bin', a));
    for (const f of readdirSync(GUEST_FILES)) {
      const target = f === 'init.sh' ? join(stage, 'init') : join(stage, 'bin', f.replace(/\.sh$/, ''));
      copyFileSync(join(GUEST_FILES, f), target);
      chmodSync(target, 0o755);
    }
    for (const p of guestPrograms(kernelDir)) {
      copyFileSync(p, join(stage, 'bin', basename(p)));
      chmodSync(join(stage, 'bin', basename(p)), 0o755);
    }
    writeFileSync(join(stage, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    writeFileSync(join(stage, 'etc/group'), 'root:x:0:\n');

    // Modules keep their paths so modules.dep and modules.alias stay valid once .xz is dropped.
    const modRoot = join(stage, 'lib/modules', release);
    const plain = (p: string): string => p.replace(/\.(xz|zst|gz)$/, '');
    for (const p of chosen) {
      const dest = join(modRoot, plain(p));
      mkdirSync(dirname(dest), { recursive: true });
      const src = join(modulesDir, p);
      if (p.endsWith('.xz')) writeFileSync(dest, execFileSync('xz', ['-dc', src], { maxBuffer: 64 << 20 }));
      else if (p.endsWith('.ko')) copyFileSync(src, dest);
      else throw new Error(`${src} uses a compression the initramfs builder does not know`);
    }
    const depLines = [...chosen].sort().map((p) => `${plain(p)}: ${deps.get(moduleName(p))?.deps.map(plain).join(' ') ?? ''}`.trimEnd());
    writeFileSync(join(modRoot, 'modules.dep'), depLines.join('\n') + '\n');
    const names = new Set([...chosen].map(moduleName));
    const aliases = readFileSync(join(modulesDir, 'modules.alias'), 'utf8').split('\n')
      .filter((l) => l.startsWith('alias ') && names.has(l.trim().split(/\s+/).pop() ?? ''));
    writeFileSync(join(modRoot, 'modules.alias'), aliases.join('\n') + '\n');
    for (const f of ['modules.builtin', 'modules.order']) {
      if (existsSync(join(modulesDir, f))) copyFileSync(join(modulesDir, f), join(modRoot, f));
    }

    execFileSync('sh', ['-c', `cd "${stage}" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > "${out}.partial" && mv "${out}.partial" "${out}"`]);
    return [...names].sort();
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

