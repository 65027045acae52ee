/**
 * The VM `paravirt run` boots: every registered device type that says how QEMU attaches it
 * (its descriptor's `qemu`), each served by one back-end, and the QEMU command line around them.
 *
 * QEMU maps guest RAM of a vhost-user VM into the back-end, so RAM is a shared memfd
 * (vhost-user.rst "Memory regions"). The lab's QEMU runs in a chroot: every file it opens (kernel,
 * initramfs, sockets) must be inside it, and is named to QEMU by its path there.
 */
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join, relative, resolve } from 'node:path';
import type { DeviceType, VmContext } from '../devices/device-type.ts';
import { withDefaults } from '../devices/host-options.ts';
import { DEVICE_TYPES } from '../devices/registry.ts';
import type { BackendPlan, DevicePlan } from './backend.ts';
import { readLabManifest } from './lab.ts';

export interface VmOptions {
  /** A qemu-system-x86_64 of the user's own; the lab's otherwise. */
  readonly qemu?: string;
  readonly kernel?: string;
  readonly initrd?: string;
  /** A raw disk image for the block device; a sparse scratch image otherwise. */
  readonly disk?: string;
  readonly tap?: string;
  readonly memoryMiB: number;
  readonly cpus: number;
  /** More kernel command line words. */
  readonly append?: string;
  /** Where sockets and scratch images go; a fresh directory otherwise. */
  readonly dir?: string;
  /** Only the command line is wanted: no file is made. */
  readonly printOnly: boolean;
}

export interface VmPlan {
  /** Where the VM's files are; removed after the VM when `ownDir`. */
  readonly dir: string;
  readonly ownDir: boolean;
  readonly backend: BackendPlan;
  /** QEMU's argv, the program first (`chroot ROOT qemu...` for the lab's). */
  readonly qemu: readonly string[];
  /** Registered types the VM lacks because they declare no QEMU attachment. */
  readonly left: readonly string[];
}

/**
 * Kernel words: the VM's console last, so that it is /dev/console; ttyS0 (to a log file) carries
 * what the kernel says before the console device is up. panic=-1 with -no-reboot makes a panic
 * end QEMU. The lab initramfs starts a shell on the console with paravirt.shell=1.
 * cryptomgr.notests, init_on_alloc=0 and no_timer_check spare seconds under TCG.
 */
const KERNEL_ARGS = ['console=ttyS0', 'panic=-1', 'quiet', 'cryptomgr.notests', 'init_on_alloc=0', 'no_timer_check', 'paravirt.shell=1'];

/** How soon QEMU tries a vhost-user socket again after its back-end went away. */
const RECONNECT_MS = 1000;

/** The file at `path` (named by `option`) exists and is a regular file, or a one-sentence error. */
function regularFile(option: string, path: string): string {
  const st = statSync(path, { throwIfNoEntry: false });
  if (st === undefined) throw new Error(`${option} ${path} does not exist.`);
  if (!st.isFile()) throw new Error(`${option} ${path} is not a regular file.`);
  return resolve(path);
}

/** Where QEMU runs: its argv prefix, and how it sees a host path. */
interface QemuHost {
  readonly argv: readonly string[];
  /** The host directory QEMU's files go under. */
  readonly base: string;
  see(option: string, hostPath: string): string;
}

function qemuHost(options: VmOptions): { host: QemuHost; kernel?: string; initrd?: string } {
  if (options.qemu !== undefined) {
    const binary = regularFile('--qemu', options.qemu);
    return { host: { argv: [binary], base: tmpdir(), see: (_, p) => resolve(p) } };
  }
  const lab = readLabManifest();
  const root = lab.qemu.chroot;
  if (root === undefined) return { host: { argv: [lab.qemu.binary], base: tmpdir(), see: (_, p) => resolve(p) }, kernel: lab.kernel.vmlinux, initrd: lab.initramfs };
  return {
    host: {
      argv: ['chroot', root, lab.qemu.binary],
      base: join(root, 'srv/paravirt/share'),
      see(option, hostPath) {
        const rel = relative(root, resolve(hostPath));
        if (rel.startsWith('..') || isAbsolute(rel)) throw new Error(`${option} ${hostPath} is outside ${root}, where the lab's QEMU runs; put it there or give --qemu.`);
        return `/${rel}`;
      },
    },
    kernel: lab.kernel.vmlinux,
    initrd: lab.initramfs,
  };
}

/** The VM's devices: one of each registered type QEMU can attach, named type + "0". */
async function devicePlans(vm: VmContext): Promise<{ devices: DevicePlan[]; console?: { id: string; name: string }; left: string[] }> {
  const devices: DevicePlan[] = [];
  const left: string[] = [];
  let console: { id: string; name: string } | undefined;
  for (const type of DEVICE_TYPES) {
    const attach = type.qemu;
    if (attach === undefined) {
      left.push(type.name);
      continue;
    }
    const transport = attach.vhostUser === undefined ? 'vfio-user' : 'vhost-user';
    const offerConfig = !(attach.frontEndConfig ?? type.localModel !== undefined);
    const all = [await attach.options(vm), ...((await attach.more?.(vm)) ?? [])];
    all.forEach((options, n) => devices.push({ id: `${type.name}${n}`, type, values: withDefaults(type.host.options, options), transport, offerConfig }));
    if (attach.console !== undefined && console === undefined) console = { id: `${type.name}0`, name: attach.console };
  }
  return { devices, console, left };
}

/** QEMU's arguments for one planned device, its socket `socket` as QEMU sees it. */
function deviceArgs(type: DeviceType, device: DevicePlan, socket: string): string[] {
  const vhostUser = type.qemu?.vhostUser;
  if (vhostUser === undefined) {
    return ['-device', JSON.stringify({ driver: 'vfio-user-pci', id: device.id, socket: { path: socket, type: 'unix' } })];
  }
  const chardev = `${device.id}-sock`;
  const reconnect = type.qemu?.reconnect === true ? `,reconnect-ms=${RECONNECT_MS}` : '';
  return ['-chardev', `socket,id=${chardev},path=${socket}${reconnect}`, ...vhostUser({ id: device.id, chardev, values: device.values })];
}

export async function planVm(options: VmOptions): Promise<VmPlan> {
  const { host, kernel: labKernel, initrd: labInitrd } = qemuHost(options);
  const kernel = options.kernel === undefined ? labKernel : regularFile('--kernel', options.kernel);
  const initrd = options.initrd === undefined ? labInitrd : regularFile('--initrd', options.initrd);
  if (kernel === undefined) throw new Error('--kernel <file> is required with --qemu.');
  const boot = ['-kernel', host.see('--kernel', kernel), ...(initrd === undefined ? [] : ['-initrd', host.see('--initrd', initrd)])];
  const disk = options.disk === undefined ? undefined : regularFile('--disk', options.disk);
  if (options.dir !== undefined) {
    if (!existsSync(options.dir) || !statSync(options.dir).isDirectory()) throw new Error(`--dir ${options.dir} is not a directory.`);
    return plan(resolve(options.dir), false);
  }
  if (options.printOnly) return plan(join(host.base, 'paravirt-run'), true);
  const dir = mkdtempSync(join(host.base, 'paravirt-run-'));
  try {
    return await plan(dir, true);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  async function plan(dir: string, ownDir: boolean): Promise<VmPlan> {
    const inDir = (file: string): string => host.see('--dir', join(dir, file));
    const { devices, console, left } = await devicePlans({ dir, disk, tap: options.tap, makeFiles: !options.printOnly });
    const mem = `${options.memoryMiB}M`;
    const qemu = [
      ...host.argv,
      '-name', 'paravirt', '-machine', 'q35', '-accel', existsSync('/dev/kvm') ? 'kvm' : 'tcg', '-cpu', 'max', '-smp', String(options.cpus),
      '-m', mem, '-object', `memory-backend-memfd,id=ram,size=${mem},share=on`, '-machine', 'memory-backend=ram',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-serial', `file:${inDir('serial.log')}`,
      '-qmp', `unix:${inDir('qmp.sock')},server=on,wait=off`,
      ...boot,
      '-append', [...KERNEL_ARGS, ...(console === undefined ? [] : [`console=${console.name}`]), options.append ?? ''].join(' ').trim(),
      ...devices.flatMap((d) => deviceArgs(d.type, d, inDir(`${d.id}.sock`))),
    ];
    return { dir, ownDir, backend: { socketDir: dir, devices, console: console?.id }, qemu, left };
  }
}

/** `argv` as one line a POSIX shell reads back as the same words. */
export function shellLine(argv: readonly string[]): string {
  return argv.map((w) => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`)).join(' ');
}
