/**
 * `npm run lab:setup [-- --refresh]`: prepares real peers for the peer and guest test tiers.
 *
 *  1. host packages from the distribution (QEMU 7.2 on Debian 12, qemu-storage-daemon, DPDK, busybox, ...);
 *  2. a Debian trixie chroot with QEMU from trixie-backports (used unless the host's QEMU is >= MIN_QEMU),
 *     its spice modules (QXL) and libvirt;
 *  3. the trixie-backports guest kernel and its modules, plus virtio_rtc built from linux-source;
 *  4. the guest's own static programs (scripts/lab/guest-programs/);
 *  5. an initramfs: busybox, the virtio modules, those programs, and the agent the tests drive over a serial port.
 *
 * Each product is keyed by the versions it was made from, so a second run only checks that they
 * exist. `--refresh` asks the mirror for newer QEMU and kernel packages.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MIN_QEMU, compareVersions, labPaths, qemuVersion, type LabManifest, type LabPaths } from '../../test/lab/qemu.ts';
import { buildInitramfs, initramfsKey } from './initramfs.ts';

/** QEMU 7.2 and qemu-storage-daemon for the peers, DPDK, and what building the lab itself takes. */
const HOST_PACKAGES = [
  'qemu-system-x86', 'qemu-system-common', 'qemu-utils', 'dpdk', 'dpdk-dev', 'busybox-static', 'tshark',
  'debootstrap', 'xz-utils', 'zstd', 'cpio', 'fio', 'gzip', 'kmod', 'ca-certificates',
  // The browser test tier drives Debian's own Chromium; nothing downloads a browser at install.
  'chromium',
];
/**
 * What the chroot carries beside QEMU: QEMU's spice modules (the QXL card), libvirt's QEMU driver
 * and virsh (the libvirt tests), and a C compiler for the guest's own programs.
 */
const CHROOT_PACKAGES = [
  'qemu-system-modules-spice', 'libvirt-daemon', 'libvirt-daemon-driver-qemu', 'libvirt-clients',
  'gcc', 'libc6-dev',
];
const SUITE = 'trixie';
const BACKPORTS = 'trixie-backports';
const ROOTFS_STAMP = '.paravirt-rootfs.json';
const GUEST_PROGRAMS = fileURLToPath(new URL('guest-programs/', import.meta.url));
const KEPT_INITRAMFS = 4;

class SetupError extends Error {}

const started = Date.now();
function step(message: string): void {
  console.log(`[lab ${((Date.now() - started) / 1000).toFixed(1)}s] ${message}`);
}

/** Runs a command, hiding its output unless it fails; returns stdout. */
function run(argv: string[], what: string): string {
  const res = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', maxBuffer: 256 << 20, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (res.error) throw new SetupError(`${what} failed: ${res.error.message}`);
  if (res.status !== 0) {
    const tail = `${res.stdout}\n${res.stderr}`.trim().split('\n').slice(-25).join('\n');
    throw new SetupError(`${what} failed (\`${argv.join(' ')}\` exited with ${res.status}):\n${tail}`);
  }
  return res.stdout;
}

function inRoot(root: string, script: string, what: string): string {
  return run(['chroot', root, 'sh', '-c', script], what);
}

function missingHostPackages(): string[] {
  return HOST_PACKAGES.filter((p) => {
    const res = spawnSync('dpkg-query', ['-W', '-f', '${db:Status-Status}', p], { encoding: 'utf8' });
    return res.stdout.trim() !== 'installed';
  });
}

function installHostPackages(missing: string[]): void {
  if (missing.length === 0) {
    step('host packages present');
    return;
  }
  step(`installing host packages: ${missing.join(' ')}`);
  run(['apt-get', 'update'], 'apt-get update');
  run(['apt-get', 'install', '-y', '--no-install-recommends', ...missing], 'installing host packages');
}

/** The Debian mirror this machine already uses (PARAVIRT_LAB_MIRROR overrides). */
function debianMirror(): string {
  if (process.env.PARAVIRT_LAB_MIRROR) return process.env.PARAVIRT_LAB_MIRROR.replace(/\/+$/, '');
  const texts: string[] = [];
  const dir = '/etc/apt/sources.list.d';
  if (existsSync(dir)) for (const f of readdirSync(dir).sort()) if (/\.(sources|list)$/.test(f)) texts.push(readFileSync(join(dir, f), 'utf8'));
  if (existsSync('/etc/apt/sources.list')) texts.push(readFileSync('/etc/apt/sources.list', 'utf8'));
  const candidates: string[] = [];
  for (const text of texts) {
    for (const m of text.matchAll(/^URIs:\s*(\S+)/gm)) candidates.push(m[1]);
    for (const m of text.matchAll(/^deb\s+(?:\[[^\]]*\]\s+)?(\S+)/gm)) candidates.push(m[1]);
  }
  const main = candidates.find((u) => /^https?:/.test(u) && !u.includes('security'));
  return (main ?? 'http://deb.debian.org/debian').replace(/\/+$/, '');
}

async function checkMirror(mirror: string): Promise<void> {
  const url = `${mirror}/dists/${BACKPORTS}/InRelease`;
  try {
    const res = await fetch(url, { method: 'HEAD', signal: AbortSignal.timeout(15_000) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
  } catch (err) {
    throw new SetupError(`the Debian mirror ${mirror} is unreachable (${url}: ${(err as Error).message}); set PARAVIRT_LAB_MIRROR to one that serves ${BACKPORTS}`);
  }
}

interface RootfsStamp { mirror: string; qemuPackage: string }

/** The trixie chroot: built into a temporary directory and renamed, so a half-built one is never used. */
function ensureRootfs(paths: LabPaths, mirror: string, refresh: boolean): RootfsStamp {
  const stampFile = join(paths.rootfs, ROOTFS_STAMP);
  if (existsSync(stampFile) && !refresh) {
    step(`reusing ${paths.rootfs}`);
    return JSON.parse(readFileSync(stampFile, 'utf8')) as RootfsStamp;
  }
  const installQemu = `apt-get update && apt-get install -y -t ${BACKPORTS} --no-install-recommends qemu-system-x86 qemu-utils qemu-system-common`;
  if (existsSync(stampFile)) {
    step(`refreshing QEMU in ${paths.rootfs}`);
    inRoot(paths.rootfs, installQemu, 'updating QEMU in the chroot');
  } else {
    const tmp = `${paths.rootfs}.partial`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(dirname(tmp), { recursive: true });
    step(`debootstrap ${SUITE} from ${mirror} (about 30 s)`);
    run(['debootstrap', '--variant=minbase', SUITE, tmp, mirror], `debootstrap of ${SUITE}`);
    writeFileSync(join(tmp, 'etc/apt/sources.list.d/backports.list'), `deb ${mirror} ${BACKPORTS} main\n`);
    step(`installing QEMU from ${BACKPORTS} into the chroot`);
    inRoot(tmp, installQemu, `installing QEMU from ${BACKPORTS}`);
    renameSync(tmp, paths.rootfs);
  }
  const qemuPackage = inRoot(paths.rootfs, "dpkg-query -W -f '${Version}' qemu-system-x86", 'reading the QEMU package version').trim();
  const stamp: RootfsStamp = { mirror, qemuPackage };
  writeFileSync(stampFile, JSON.stringify(stamp, null, 2) + '\n');
  return stamp;
}

/** CHROOT_PACKAGES, from backports where it has them (so QEMU's modules match its QEMU). */
function ensureChrootPackages(paths: LabPaths): void {
  const missing = CHROOT_PACKAGES.filter((p) => {
    const res = spawnSync('chroot', [paths.rootfs, 'dpkg-query', '-W', '-f', '${db:Status-Status}', p], { encoding: 'utf8' });
    return res.stdout.trim() !== 'installed';
  });
  if (missing.length === 0) return;
  step(`installing into the chroot: ${missing.join(' ')}`);
  inRoot(paths.rootfs, `apt-get update && apt-get install -y -t ${BACKPORTS} --no-install-recommends ${missing.join(' ')}`, 'installing chroot packages');
}

/**
 * The guest's own small programs (scripts/lab/guest-programs/*.c: what busybox cannot do, such as
 * vsock sockets), compiled statically in the chroot into the kernel's bin/ directory, which the
 * initramfs carries. Rebuilt when a source changes.
 */
function ensureGuestPrograms(paths: LabPaths, kernel: Kernel): void {
  const sources = existsSync(GUEST_PROGRAMS) ? readdirSync(GUEST_PROGRAMS).filter((f) => f.endsWith('.c')).sort() : [];
  const bin = join(kernel.dir, 'bin');
  mkdirSync(bin, { recursive: true });
  for (const file of sources) {
    const name = file.slice(0, -2);
    const text = readFileSync(join(GUEST_PROGRAMS, file));
    const digest = createHash('sha256').update(text).digest('hex');
    const stamp = join(bin, `.${name}.sha256`);
    if (existsSync(join(bin, name)) && existsSync(stamp) && readFileSync(stamp, 'utf8') === digest) continue;
    step(`compiling the guest program ${name}`);
    const work = join(paths.rootfs, 'tmp/paravirt-guest-program');
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true });
    writeFileSync(join(work, file), text);
    inRoot(paths.rootfs, `cd /tmp/paravirt-guest-program && gcc -static -O2 -Wall -Werror -o ${name} ${file}`, `compiling ${file}`);
    copyFileSync(join(work, name), join(bin, name));
    chmodSync(join(bin, name), 0o755);
    writeFileSync(stamp, digest);
    rmSync(work, { recursive: true, force: true });
  }
}

/** Host QEMU when it is new enough, else the chroot's. */
function chooseQemu(paths: LabPaths): LabManifest['qemu'] {
  const host = '/usr/bin/qemu-system-x86_64';
  if (existsSync(host)) {
    const version = qemuVersion([host]);
    if (compareVersions(version, MIN_QEMU) >= 0) {
      step(`using the host's QEMU ${version}`);
      return { binary: host, version };
    }
  }
  const binary = '/usr/bin/qemu-system-x86_64';
  const version = qemuVersion(['chroot', paths.rootfs, binary]);
  if (compareVersions(version, MIN_QEMU) < 0) {
    throw new SetupError(`${BACKPORTS} provides QEMU ${version}, older than ${MIN_QEMU}; try \`npm run lab:setup -- --refresh\``);
  }
  step(`using QEMU ${version} from ${paths.rootfs} (host has an older one)`);
  return { binary, chroot: paths.rootfs, version };
}

interface Kernel { release: string; package: string; dir: string }

/** Resolves linux-image-amd64 in trixie-backports to a release and fetches its binary and module packages. */
function ensureKernel(paths: LabPaths, refresh: boolean): Kernel {
  const current = join(paths.guestDir, 'kernel.json');
  if (existsSync(current) && !refresh) {
    const k = JSON.parse(readFileSync(current, 'utf8')) as Kernel;
    if (existsSync(join(k.dir, 'vmlinux'))) {
      step(`reusing kernel ${k.release} (${k.package})`);
      return k;
    }
  }
  if (refresh) inRoot(paths.rootfs, 'apt-get update', 'apt-get update in the chroot');
  const depends = inRoot(paths.rootfs, `apt-cache -t ${BACKPORTS} depends linux-image-amd64`, 'resolving linux-image-amd64');
  const image = /Depends:\s*linux-image-(\S+)/.exec(depends);
  if (!image) throw new SetupError(`linux-image-amd64 in ${BACKPORTS} names no linux-image-VERSION package:\n${depends}`);
  const release = image[1].replace(/-unsigned$/, '');
  const binaryPkg = `linux-binary-unsigned-${release}`;
  const modulesPkg = `linux-modules-${release}`;
  const pkgVersion = inRoot(paths.rootfs, `apt-cache -t ${BACKPORTS} show --no-all-versions ${modulesPkg} | sed -n 's/^Version: //p'`, `looking up ${modulesPkg}`).trim();
  if (!pkgVersion) throw new SetupError(`${BACKPORTS} has no package ${modulesPkg}`);
  const dir = join(paths.guestDir, `linux-${release}_${pkgVersion}`);
  if (!existsSync(join(dir, 'vmlinux'))) {
    step(`downloading ${binaryPkg} and ${modulesPkg} ${pkgVersion}`);
    const work = join(paths.rootfs, 'tmp/paravirt-kernel');
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true });
    inRoot(paths.rootfs, `cd /tmp/paravirt-kernel && apt-get download -t ${BACKPORTS} ${binaryPkg} ${modulesPkg} && for d in *.deb; do dpkg-deb -x "$d" x; done`, 'downloading the guest kernel');
    const x = join(work, 'x');
    const vmlinuz = ['vmlinuz', 'vmlinuz.unsigned'].map((f) => join(x, 'usr/lib/modules', release, f))
      .concat(join(x, 'boot', `vmlinuz-${release}`)).find(existsSync);
    if (!vmlinuz) throw new SetupError(`${binaryPkg} contains no vmlinuz (looked in usr/lib/modules/${release}/ and boot/)`);
    const modules = [join(x, 'usr/lib/modules', release), join(x, 'lib/modules', release)].find((d) => existsSync(join(d, 'kernel')));
    if (!modules) throw new SetupError(`${modulesPkg} contains no kernel/ module tree`);
    const partial = `${dir}.partial`;
    rmSync(partial, { recursive: true, force: true });
    mkdirSync(join(partial, 'lib/modules'), { recursive: true });
    renameSync(vmlinuz, join(partial, 'vmlinuz'));
    renameSync(modules, join(partial, 'lib/modules', release));
    // Debian generates modules.dep and modules.alias at install time; do the same.
    run(['depmod', '-b', partial, release], `depmod for ${release}`);
    writeFileSync(join(partial, 'vmlinux'), extractVmlinux(join(partial, 'vmlinuz')));
    rmSync(dir, { recursive: true, force: true });
    renameSync(partial, dir);
    rmSync(work, { recursive: true, force: true });
  }
  const kernel: Kernel = { release, package: pkgVersion, dir };
  writeFileSync(current, JSON.stringify(kernel, null, 2) + '\n');
  // A kernel replaced by --refresh is no longer referenced by anything.
  for (const f of readdirSync(paths.guestDir)) {
    if (f.startsWith('linux-') && join(paths.guestDir, f) !== dir) rmSync(join(paths.guestDir, f), { recursive: true, force: true });
  }
  return kernel;
}

/**
 * Linux's virtio_rtc driver (drivers/virtio/virtio_rtc_*.c), which Debian's kernel leaves out
 * (CONFIG_VIRTIO_RTC is not set), built unchanged from Debian's linux-source as an out-of-tree
 * module against the guest kernel's own headers, with its PTP clocks and RTC class device
 * enabled; and testptp (tools/testing/selftests/ptp), statically linked, because reading a PTP
 * clock takes clock_gettime on /dev/ptpN, which busybox cannot do. Both land in the kernel's
 * directory (updates/ is where depmod looks for modules of the kernel's release), so they are
 * cached, and replaced, with the kernel they were built for.
 */
function ensureVirtioRtc(paths: LabPaths, kernel: Kernel): void {
  const stamp = join(kernel.dir, 'virtio-rtc.json');
  const modulesDir = join(kernel.dir, 'lib/modules', kernel.release);
  const module = join(modulesDir, 'updates/virtio_rtc.ko');
  const testptp = join(kernel.dir, 'bin/testptp');
  if (existsSync(stamp) && existsSync(module) && existsSync(testptp)) {
    step(`reusing virtio_rtc.ko and testptp for ${kernel.release}`);
    return;
  }
  const series = /^(\d+\.\d+)/.exec(kernel.release)?.[1];
  if (!series) throw new SetupError(`kernel release ${kernel.release} does not start with MAJOR.MINOR`);
  const headers = `linux-headers-${kernel.release}`;
  step(`building virtio_rtc.ko from linux-source-${series} against ${headers} (about a minute)`);
  inRoot(paths.rootfs, `apt-get install -y -t ${BACKPORTS} --no-install-recommends linux-source-${series} ${headers} gcc make libc6-dev xz-utils`, `installing linux-source-${series} and ${headers}`);
  const work = '/tmp/paravirt-virtio-rtc';
  const source = `linux-source-${series}`;
  const files = ['virtio_rtc_driver.c', 'virtio_rtc_ptp.c', 'virtio_rtc_class.c', 'virtio_rtc_internal.h'].map((f) => `${source}/drivers/virtio/${f}`);
  // The Makefile's composite object, with the two options Kconfig would set (both default y).
  const kbuild = [
    'obj-m += virtio_rtc.o',
    'virtio_rtc-y := virtio_rtc_driver.o virtio_rtc_ptp.o virtio_rtc_class.o',
    'ccflags-y += -DCONFIG_VIRTIO_RTC_PTP=1 -DCONFIG_VIRTIO_RTC_CLASS=1',
  ].join('\\n');
  // objtool reads /proc; a private mount namespace keeps that /proc mount out of the host's.
  run(['unshare', '-m', 'chroot', paths.rootfs, 'sh', '-c', [
    'set -e',
    `rm -rf ${work} && mkdir -p ${work}/src && cd ${work}`,
    `tar -xJf /usr/src/${source}.tar.xz ${files.join(' ')} ${source}/tools/testing/selftests/ptp/testptp.c`,
    `cp ${files.join(' ')} src/`,
    `printf '${kbuild}\\n' > src/Kbuild`,
    'mount -t proc proc /proc',
    `make -s -C /usr/src/${headers} M=${work}/src modules`,
    'strip --strip-debug src/virtio_rtc.ko',
    `gcc -static -O2 -o testptp ${source}/tools/testing/selftests/ptp/testptp.c`,
  ].join(' && ')], 'building virtio_rtc.ko and testptp');
  const built = join(paths.rootfs, work);
  mkdirSync(dirname(module), { recursive: true });
  mkdirSync(dirname(testptp), { recursive: true });
  copyFileSync(join(built, 'src/virtio_rtc.ko'), module);
  copyFileSync(join(built, 'testptp'), testptp);
  rmSync(built, { recursive: true, force: true });
  run(['depmod', '-b', kernel.dir, kernel.release], `depmod for ${kernel.release} with virtio_rtc`);
  const version = inRoot(paths.rootfs, `dpkg-query -W -f '\${Version}' linux-source-${series}`, `reading the linux-source-${series} version`).trim();
  writeFileSync(stamp, JSON.stringify({ source: `linux-source-${series}`, version, headers }, null, 2) + '\n');
}

/**
 * The uncompressed kernel inside a bzImage. QEMU boots it straight through its PVH entry point,
 * which under TCG saves seconds: no firmware, no in-guest decompression.
 */
function extractVmlinux(bzImage: string): Buffer {
  const image = readFileSync(bzImage);
  if (image.length < 0x250 || image.readUInt32LE(0x202) !== 0x53726448 /* "HdrS" */) {
    throw new SetupError(`${bzImage} is not a bzImage (no "HdrS" boot protocol header)`);
  }
  // Boot protocol: the protected-mode code follows (setup_sects + 1) sectors; payload_offset and
  // payload_length (0x248, 0x24c) locate the compressed vmlinux in it. kbuild appends the
  // uncompressed size as 4 bytes, which the decompressors would reject as trailing garbage.
  const start = ((image[0x1f1] || 4) + 1) * 512 + image.readUInt32LE(0x248);
  const payload = image.subarray(start, start + image.readUInt32LE(0x24c) - 4);
  const magic = payload.subarray(0, 6).toString('hex');
  const tool = magic.startsWith('28b52ffd') ? 'zstd' : magic.startsWith('fd377a585a00') ? 'xz' : magic.startsWith('1f8b') ? 'gzip' : undefined;
  if (!tool) throw new SetupError(`${bzImage} compresses its kernel in a format lab:setup does not know (magic ${magic})`);
  const vmlinux = execFileSync(tool, ['-dc'], { input: payload, maxBuffer: 1 << 30 });
  if (vmlinux.readUInt32BE(0) !== 0x7f454c46) throw new SetupError(`the kernel in ${bzImage} did not decompress to an ELF file`);
  return vmlinux;
}

async function main(): Promise<void> {
  const refresh = process.argv.includes('--refresh');
  if (process.getuid?.() !== 0) {
    throw new SetupError('this must run as root, because it installs packages and builds a chroot; run `sudo npm run lab:setup`');
  }
  const paths = labPaths();
  step(`lab directory ${paths.dir}${process.env.PARAVIRT_LAB_DIR ? '' : ' (set PARAVIRT_LAB_DIR to move it)'}`);
  mkdirSync(paths.dir, { recursive: true });

  const mirror = debianMirror();
  const missing = missingHostPackages();
  const needMirror = refresh || missing.length > 0 || !existsSync(join(paths.rootfs, ROOTFS_STAMP)) || !existsSync(join(paths.guestDir, 'kernel.json'));
  if (needMirror) await checkMirror(mirror);
  installHostPackages(missing);
  const rootfs = ensureRootfs(paths, mirror, refresh);
  mkdirSync(paths.guestDir, { recursive: true });
  mkdirSync(paths.shareDir, { recursive: true });
  mkdirSync(paths.logDir, { recursive: true });
  const qemu = chooseQemu(paths);
  const kernel = ensureKernel(paths, refresh);
  ensureChrootPackages(paths);
  ensureVirtioRtc(paths, kernel);
  ensureGuestPrograms(paths, kernel);

  const key = initramfsKey(kernel.dir, kernel.release);
  const initramfs = join(paths.guestDir, `initramfs-${kernel.release}-${key}.cpio`);
  let modules: string[];
  const modulesList = `${initramfs}.modules`;
  if (existsSync(initramfs) && existsSync(modulesList)) {
    step(`reusing ${initramfs}`);
    modules = readFileSync(modulesList, 'utf8').split('\n').filter(Boolean);
  } else {
    step('building the initramfs');
    modules = buildInitramfs(kernel.dir, kernel.release, initramfs, (m) => step(m));
    writeFileSync(modulesList, modules.join('\n') + '\n');
  }
  // Older initramfs images are rebuilt from scratch in seconds; keep the newest few, because
  // checkouts of different guest scripts (test/lab/qemu.ts picks by key) may share one lab.
  const images = readdirSync(paths.guestDir).filter((f) => /^initramfs-.*\.cpio$/.test(f)).map((f) => join(paths.guestDir, f))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  for (const old of images.slice(KEPT_INITRAMFS)) {
    rmSync(old, { force: true });
    rmSync(`${old}.modules`, { force: true });
  }

  const manifest: LabManifest = {
    format: 1,
    mirror: rootfs.mirror,
    qemu,
    kernel: { release: kernel.release, package: kernel.package, vmlinuz: join(kernel.dir, 'vmlinuz'), vmlinux: join(kernel.dir, 'vmlinux') },
    initramfs,
    modules,
  };
  writeFileSync(paths.manifest, JSON.stringify(manifest, null, 2) + '\n');
  const qsd = existsSync('/usr/bin/qemu-storage-daemon') ? execFileSync('/usr/bin/qemu-storage-daemon', ['--version'], { encoding: 'utf8' }).split('\n')[0] : 'missing';
  step(`ready: QEMU ${qemu.version}, Linux ${kernel.release} (${kernel.package}), ${modules.length} modules; host qemu-storage-daemon: ${qsd}`);
}

main().catch((err: unknown) => {
  console.error(`lab:setup: ${err instanceof SetupError ? err.message : String((err as Error).stack ?? err)}`);
  process.exit(1);
});
