/**
 * A QEMU machine driven over qtest: no guest code runs; the test is the CPU. The machine's qtest
 * chardev is QEMU's stdio, which works the same for the host's QEMU and for the lab's QEMU in a
 * chroot (no socket path has to be visible on both sides).
 *
 * Debian 12's QEMU 7.2 is built without the qtest accelerator. There the machine runs under TCG
 * but stopped (-S) from the start, so firmware never runs and the test still owns every register;
 * the only loss is the virtual clock, which qtest can step only under its own accelerator.
 */
import { closeSync, existsSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { Mapping } from '../../src/native/mapping.ts';
import { PciConfig } from '../../src/transports/pci/port-config.ts';
import { Q35_BAR_WINDOWS } from '../../src/transports/pci/q35.ts';
import { QtestClient } from '../../src/transports/qtest/client.ts';
import { GuestMemory } from '../../src/virtio/memory.ts';
import { PeerProcess } from './peer-process.ts';
import { qemuCommand, systemQemuCommand, type QemuCommand } from './qemu.ts';

export interface QtestOptions {
  /** QEMU arguments adding devices, e.g. ['-device', 'virtio-blk-pci,...', '-blockdev', '...']. */
  readonly devices: readonly string[];
  readonly machine?: string;
  /** 'lab': the lab's QEMU (>= 10.1, possibly in a chroot); 'system': the host distribution's. */
  readonly qemu?: 'lab' | 'system';
  readonly memoryMiB?: number;
  /**
   * Back guest RAM with a shared file (`ramFile` in the result) and map it here (`memory`), so
   * rings and buffers are plain memory to this process while QEMU's devices use them.
   * Needs memoryMiB below 2816, where q35 keeps all RAM in one range from address 0.
   */
  readonly sharedRam?: boolean;
}

export interface QtestMachine {
  /** The qtest client; a GuestBus for driver transports. */
  readonly bus: QtestClient;
  readonly qemu: QemuCommand;
  /** Whether QEMU runs under the qtest accelerator (clockStep/clockSet work) or a stopped TCG. */
  readonly accelerator: 'qtest' | 'tcg';
  /** Host path of the file backing guest RAM, with sharedRam; file offset = guest-physical address. */
  readonly ramFile: string | undefined;
  /**
   * Guest RAM mapped into this process, with sharedRam. Below 1 MiB the guest sees ROM and VGA
   * windows over parts of it, so buffers for devices belong above 1 MiB.
   */
  readonly memory: GuestMemory | undefined;
  /** A host directory QEMU can see, removed on close: for sockets and images the test makes. */
  readonly workDir: string;
  /** Configuration space, enumeration and BAR assignment: what firmware would have done. */
  readonly pci: PciConfig;
  pciConfigRead(bdf: number, offset: number, size: 1 | 2 | 4): Promise<number>;
  pciConfigWrite(bdf: number, offset: number, size: 1 | 2 | 4, value: number): Promise<void>;
  /** Routes the inbound interrupt pins of `qomPath` (on q35, "ioapic") to bus.onInterrupt. */
  irqInterceptIn(qomPath: string): Promise<void>;
  /** Stops QEMU and removes the work directory; safe to call twice. */
  close(): Promise<void>;
}

/** Per QEMU binary: whether it accepts -accel qtest (learned from the first start). */
const qtestAccel = new Map<string, boolean>();

function commandFor(which: 'lab' | 'system'): QemuCommand {
  return which === 'lab' ? qemuCommand() : systemQemuCommand();
}

/** q35 splits RAM of 0xb0000000 bytes or more at 2 GiB and moves the rest above 4 GiB. */
const Q35_SPLIT_MIB = 0xb000_0000 / 2 ** 20;

function ramMiB(options: QtestOptions): number {
  const memoryMiB = options.memoryMiB ?? 64;
  if (!Number.isInteger(memoryMiB) || memoryMiB < 1) throw new RangeError(`memoryMiB ${memoryMiB} is not a positive integer`);
  if (options.sharedRam && memoryMiB >= Q35_SPLIT_MIB) {
    throw new RangeError(`memoryMiB ${memoryMiB} with sharedRam must be below ${Q35_SPLIT_MIB}, where guest RAM is one range from 0`);
  }
  return memoryMiB;
}

function machineArgs(options: QtestOptions, qemu: QemuCommand, accel: 'qtest' | 'tcg', ramFile: string | undefined): string[] {
  const memoryMiB = ramMiB(options);
  const machine = [options.machine ?? 'q35', ...(ramFile ? ['memory-backend=ram'] : [])].join(',');
  return [
    ...qemu.argv,
    '-machine', machine,
    '-accel', accel,
    ...(accel === 'tcg' ? ['-S'] : []),
    '-qtest', 'stdio',
    '-qtest-log', 'none',
    '-display', 'none',
    '-nodefaults',
    '-no-user-config',
    '-m', `${memoryMiB}M`,
    ...(ramFile
      ? ['-object', `memory-backend-file,id=ram,size=${memoryMiB}M,mem-path=${qemu.toQemuPath(ramFile)},share=on`]
      : []),
    ...options.devices,
  ];
}

/** Starts QEMU and waits until it answers over qtest; if `t` is given, the machine closes when the test ends. */
export async function startQtest(options: QtestOptions, t?: TestContext): Promise<QtestMachine> {
  const qemu = commandFor(options.qemu ?? 'lab');
  const key = qemu.argv.join(' ');
  let machine: QtestMachine | undefined;
  if (qtestAccel.get(key) !== false) {
    machine = await launch(options, qemu, 'qtest').catch((error: Error) => {
      if (!/invalid accelerator qtest/.test(error.message)) throw error;
      return undefined;
    });
    qtestAccel.set(key, machine !== undefined);
  }
  machine ??= await launch(options, qemu, 'tcg');
  const ready = machine;
  t?.after(() => ready.close());
  return ready;
}

function mapFile(path: string, size: number): Mapping {
  const fd = openSync(path, 'r+');
  try {
    return Mapping.shared(fd, size);
  } finally {
    closeSync(fd);
  }
}

async function launch(options: QtestOptions, qemu: QemuCommand, accelerator: 'qtest' | 'tcg'): Promise<QtestMachine> {
  const workDir = mkdtempSync(join(existsSync(qemu.shareDir) ? qemu.shareDir : tmpdir(), 'qtest-'));
  const ramFile = options.sharedRam ? join(workDir, 'ram') : undefined;
  const cleanup = (): void => rmSync(workDir, { recursive: true, force: true });
  let peer: PeerProcess;
  try {
    peer = new PeerProcess(`QEMU ${qemu.version}`, machineArgs(options, qemu, accelerator, ramFile), { textStdout: false, cleanup });
  } catch (error) {
    cleanup();
    throw error;
  }
  const stdout = peer.child.stdout;
  const stdin = peer.child.stdin;
  if (!stdout || !stdin) throw new Error('QEMU was spawned without pipes');
  const bus = new QtestClient(stdout, stdin);

  let mapping: Mapping | undefined;
  const close = async (): Promise<void> => {
    mapping?.unmap();
    bus.close();
    stdin.end();
    await peer.stop();
  };

  try {
    // The first answer proves QEMU is up and the protocol works; the accesses below assume x86's order.
    const order = await bus.endianness();
    if (order !== 'little') throw new Error(`QEMU reports a ${order}-endian target; the qtest machine must be x86`);
    if (ramFile) mapping = mapFile(ramFile, ramMiB(options) * 2 ** 20);
  } catch (error) {
    await peer.stop();
    throw new Error(peer.describe(`starting under qtest (${(error as Error).message})`), { cause: error });
  }

  const pci = new PciConfig(bus, Q35_BAR_WINDOWS);
  return {
    bus,
    qemu,
    accelerator,
    ramFile,
    memory: mapping && new GuestMemory([{ guestAddr: 0, bytes: mapping.bytes }]),
    workDir,
    pci,
    pciConfigRead: (target, offset, size) => pci.read(target, offset, size),
    pciConfigWrite: (target, offset, size, value) => pci.write(target, offset, size, value),
    irqInterceptIn: (qomPath) => bus.interceptIrqIn(qomPath),
    close,
  };
}
