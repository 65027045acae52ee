/**
 * A private libvirt for one test: the lab chroot's libvirtd (12.9, with its QEMU driver) drives
 * the chroot's QEMU 11.1, and `virsh` talks to it over a socket of its own.
 *
 *   const libvirt = await startLibvirt(t);
 *   await libvirt.virsh('define', libvirt.qemuPath(xmlFile));
 *   await libvirt.virsh('start', 'vm');
 *
 * Debian's libvirt 12.9 ships the monolithic libvirtd (libvirt-daemon), not the modular
 * virtqemud. The daemon runs in a mount namespace of its own (`unshare --mount`, private
 * propagation): there it gets /proc and /sys inside the chroot, and its directories
 * (/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt) are bind mounts of a fresh
 * directory under the lab's share dir. Nothing is mounted on the host, the mounts vanish with
 * the namespace's last process (the daemon and the QEMUs it starts), and two instances never
 * see each other's domains. /dev stays the chroot's own few nodes (null, zero, random,
 * urandom, ptmx…), which is all QEMU opens here. The capability cache (/var/cache/libvirt) is
 * the chroot's, shared: probing QEMU again for every test would cost seconds.
 *
 * The embedded driver (`qemu:///embed?root=DIR`, no daemon) works for one `virsh` process, but
 * every process opening it is a driver of its own that re-attaches to running QEMUs in a
 * background thread and is torn down when it exits: consecutive `virsh` commands race (seen
 * here: `destroy` answering "domain is not running" while it ran, and a later `virsh` stopping
 * QEMU with "shutting down, reason=daemon"). A daemon is also what users run.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { PeerProcess } from './peer-process.ts';
import { labPaths, qemuCommand } from './qemu.ts';
import { waitForListening } from './qsd.ts';
import { labUnavailable } from './require.ts';

/**
 * The private instance's qemu.conf: libvirt's defaults, but for what the lab lacks or must keep
 * as it is. Everything else (QEMU's seccomp sandbox, the security driver, which finds neither
 * AppArmor nor SELinux and is "none" anyway) stays as users get it.
 */
const QEMU_CONF = `# Written by test/lab/libvirt.ts for one test's private libvirtd.
# The tests run as root, and the share dir, the back-ends' sockets and the lab's kernel are
# root's: QEMU runs as root rather than libvirt-qemu, and libvirt changes no owner of them (nor
# records owners in extended attributes of the lab's shared files).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
# The chroot's /sys is a fresh sysfs without cgroup mounts, and the host's cgroups belong to
# whatever runs the tests: no cgroups of libvirt's own.
cgroup_controllers = [ ]
# libvirt's private /dev per QEMU starts from the /dev mount it finds, and the chroot's /dev is
# a plain directory ("Unable to find any /dev mount" otherwise). QEMU sees the chroot's /dev.
namespaces = [ ]
# No virtlogd runs ("Failed to connect socket to '/run/libvirt/virtlogd-sock'" otherwise):
# QEMU's stderr goes straight to /var/log/libvirt/qemu/NAME.log.
stdio_handler = "file"
`;

/**
 * Run by `unshare --mount` (whose propagation is private by default) as `sh -c SCRIPT sh ROOT
 * DIR`: mounts /proc and /sys in the chroot, puts the instance's directories over libvirt's,
 * and becomes libvirtd. DIR is the instance's directory as the chroot sees it.
 */
const DAEMON_SCRIPT = `set -e
root=$1 dir=$2
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
# The packages make these, but /run/libvirt is also what a booted system would make at boot.
mkdir -p "$root/etc/libvirt" "$root/run/libvirt" "$root/var/lib/libvirt" "$root/var/log/libvirt"
mount --bind "$root$dir/etc" "$root/etc/libvirt"
mount --bind "$root$dir/run" "$root/run/libvirt"
mount --bind "$root$dir/lib" "$root/var/lib/libvirt"
mount --bind "$root$dir/log" "$root/var/log/libvirt"
exec chroot "$root" /usr/sbin/libvirtd --config "$dir/etc/libvirtd.conf" --pid-file "$dir/libvirtd.pid"
`;

/** How long one `virsh` command may take: `start` under TCG on a busy machine takes seconds. */
const VIRSH_DEADLINE_MS = 120_000;

/** What a private libvirtd leaves in its directory, as host paths. */
interface Layout {
  /** The instance's directory (under the lab's share dir). */
  readonly dir: string;
  /** libvirtd's read-write socket. */
  readonly socket: string;
  /** Where QEMU's own pid files go: /run/libvirt/qemu inside. */
  readonly qemuRunDir: string;
  readonly qemuLogDir: string;
}

function layout(dir: string): Layout {
  return { dir, socket: join(dir, 'run', 'libvirt-sock'), qemuRunDir: join(dir, 'run', 'qemu'), qemuLogDir: join(dir, 'log', 'qemu') };
}

export interface Libvirt {
  /** Host directory of this instance, under the lab's share dir; removed by close(). */
  readonly dir: string;
  /** The URI `virsh -c` takes, as the chroot sees the socket. */
  readonly uri: string;
  /** `hostPath` as libvirtd and QEMU see it (they run in the chroot). */
  qemuPath(hostPath: string): string;
  /** Runs `virsh -c URI ARGS…` in the chroot; resolves with stdout, rejects with its error and the daemon's last lines. */
  virsh(...args: string[]): Promise<string>;
  /** QEMU's command line and stderr for `domain`, as libvirt logged them ('' before its first start). */
  qemuLog(domain: string): string;
  /** Destroys every running domain, stops the daemon and removes the directory; safe to call twice. */
  close(): Promise<void>;
}

/** Why libvirt cannot run here, or undefined when it can. */
export function libvirtUnavailable(): string | undefined {
  const lab = labUnavailable();
  if (lab !== undefined) return lab;
  const { rootfs } = labPaths();
  for (const program of ['/usr/sbin/libvirtd', '/usr/bin/virsh']) {
    if (!existsSync(join(rootfs, program))) return `${program} is missing from the lab chroot ${rootfs}; run \`sudo npm run lab:setup\``;
  }
  if (!['/usr/bin/unshare', '/bin/unshare'].some((p) => existsSync(p))) return 'unshare (util-linux) is not installed on the host';
  return undefined;
}

/** Pids of the QEMUs the instance started that are still running, from libvirt's pid files. */
function qemuPids(l: Layout): number[] {
  const files = existsSync(l.qemuRunDir) ? readdirSync(l.qemuRunDir).filter((f) => f.endsWith('.pid')) : [];
  const pids = files.map((f) => Number(readFileSync(join(l.qemuRunDir, f), 'utf8').trim()));
  // A pid file outliving its QEMU must not name another process that took the number since.
  const isQemu = (pid: number): boolean => {
    try {
      return readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu');
    } catch {
      return false; // exited
    }
  };
  return pids.filter((pid) => Number.isInteger(pid) && pid > 0 && isQemu(pid));
}

/** Kills what qemuPids() finds. */
function killQemus(l: Layout): void {
  for (const pid of qemuPids(l)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
}

/**
 * QEMUs libvirtd started outlive it (libvirt's design: a daemon restart keeps guests running), and
 * they are not our children: a test process ending without close() kills them by pid file and
 * removes the instance's directory.
 */
const instances = new Set<Layout>();
const killAll = (): void => {
  for (const l of instances) {
    killQemus(l);
    rmSync(l.dir, { recursive: true, force: true });
  }
};
process.on('exit', killAll);
// An interrupted run ends without 'exit': kill them, then let the signal do what it would have.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    killAll();
    process.kill(process.pid, signal);
  });
}

/** Starts a private libvirtd and resolves once its socket accepts connections. */
export async function launchLibvirt(name = 'libvirt'): Promise<Libvirt> {
  const qemu = qemuCommand();
  const { rootfs } = labPaths();
  mkdirSync(qemu.shareDir, { recursive: true });
  const l = layout(mkdtempSync(join(qemu.shareDir, `${name}-`)));
  const inside = qemu.toQemuPath(l.dir);
  // etc, run, lib and log of the instance, bind-mounted over libvirt's own in its namespace;
  // run is also where libvirtd.conf puts the socket, so `virsh` finds it outside the namespace.
  for (const d of ['etc', 'run', 'lib', 'log']) mkdirSync(join(l.dir, d));
  writeFileSync(join(l.dir, 'etc', 'qemu.conf'), QEMU_CONF);
  writeFileSync(join(l.dir, 'etc', 'libvirtd.conf'), [
    `unix_sock_dir = "${inside}/run"`,
    // The socket lives in a root-only directory of a root-only lab; libvirt's polkit default needs a D-Bus the chroot lacks.
    'auth_unix_rw = "none"',
    'auth_unix_ro = "none"',
    '',
  ].join('\n'));
  const daemon = new PeerProcess('libvirtd', ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', DAEMON_SCRIPT, 'sh', rootfs, inside], { textStdout: true });
  instances.add(l);
  const uri = `qemu+unix:///system?socket=${inside}/run/libvirt-sock`;

  const virsh = async (...args: string[]): Promise<string> => {
    const run = new PeerProcess('virsh', ['chroot', rootfs, '/usr/bin/virsh', '--quiet', '--connect', uri, ...args], { textStdout: true });
    // A daemon that stops answering must fail the test with its log rather than hang it.
    const timer = setTimeout(() => void run.stop(), VIRSH_DEADLINE_MS);
    const exit = await run.exited;
    clearTimeout(timer);
    if (exit.code === 0) return run.stdout;
    const daemonTail = daemon.output.trim().split('\n').slice(-10).join('\n');
    const how = exit.signal === null ? `code ${exit.code}` : `${exit.signal}, stopped after ${VIRSH_DEADLINE_MS} ms`;
    throw new Error(`virsh ${args.join(' ')} failed (${how}): ${run.output.trim()}\n--- libvirtd ---\n${daemonTail}`);
  };

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closed ??= (async () => {
      if (daemon.running) {
        // Domains first: libvirtd leaves running QEMUs behind on purpose when it stops.
        const running = (await virsh('list', '--name').catch(() => '')).split('\n').map((s) => s.trim()).filter(Boolean);
        for (const domain of running) await virsh('destroy', domain).catch(() => undefined);
      }
      killQemus(l);
      await daemon.stop();
      instances.delete(l);
      rmSync(l.dir, { recursive: true, force: true });
    })();
    return closed;
  };

  try {
    await waitForListening(l.socket, daemon);
  } catch (error) {
    await close();
    throw error;
  }
  return {
    dir: l.dir,
    uri,
    qemuPath: (p) => qemu.toQemuPath(p),
    virsh,
    qemuLog: (domain) => {
      const file = join(l.qemuLogDir, `${domain}.log`);
      return existsSync(file) ? readFileSync(file, 'utf8') : '';
    },
    close,
  };
}

/** launchLibvirt() closed when the test ends, even when it fails. */
export async function startLibvirt(t: TestContext, name?: string): Promise<Libvirt> {
  const libvirt = await launchLibvirt(name);
  t.after(() => libvirt.close());
  return libvirt;
}
