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
import { QtestClient } from '../../src/transports/qtest/client.ts';
import { GuestMemory } from '../../src/virtio/memory.ts';
import { PeerProcess } from './peer-process.ts';
import { qemuCommand, systemQemuCommand, type QemuCommand } from './qemu.ts';

/** Bus/device/function of a PCI function, packed as in a configuration address: bus<<8 | dev<<3 | fn. */
export function bdf(bus: number, device: number, fn: number): number {
  if (!Number.isInteger(bus) || bus < 0 || bus > 255) throw new RangeError(`PCI bus ${bus} is outside 0..255`);
  if (!Number.isInteger(device) || device < 0 || device > 31) throw new RangeError(`PCI device ${device} is outside 0..31`);
  if (!Number.isInteger(fn) || fn < 0 || fn > 7) throw new RangeError(`PCI function ${fn} is outside 0..7`);
  return (bus << 8) | (device << 3) | fn;
}

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

export interface PciFunction {
  readonly bdf: number;
  readonly vendorId: number;
  readonly deviceId: number;
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
  pciConfigRead(bdf: number, offset: number, size: 1 | 2 | 4): Promise<number>;
  pciConfigWrite(bdf: number, offset: number, size: 1 | 2 | 4, value: number): Promise<void>;
  /** Functions present on bus 0 (vendor id not 0xffff), in slot order. */
  pciFunctions(): Promise<PciFunction[]>;
  /** Routes the inbound interrupt pins of `qomPath` (on q35, "ioapic") to bus.onInterrupt. */
  irqInterceptIn(qomPath: string): Promise<void>;
  /** Stops QEMU and removes the work directory; safe to call twice. */
  close(): Promise<void>;
}

/** PCI configuration mechanism #1: an address register and a data window in x86 port space. */
const CONFIG_ADDRESS = 0xcf8;
const CONFIG_DATA = 0xcfc;

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

  /** Selects a dword of configuration space; the caller issues its data access before awaiting, so the pair stays adjacent. */
  const select = (target: number, offset: number, size: number): Promise<void> => {
    if (!Number.isInteger(target) || target < 0 || target > 0xffff) throw new RangeError(`PCI address ${target} is not a bus/device/function`);
    if (!Number.isInteger(offset) || offset < 0 || offset + size > 256 || offset % size !== 0) {
      throw new RangeError(`PCI configuration offset ${offset} is not a ${size}-byte aligned offset below 256`);
    }
    return bus.outU32(CONFIG_ADDRESS, (0x8000_0000 | (target << 8) | (offset & 0xfc)) >>> 0);
  };
  const port = (offset: number): number => CONFIG_DATA + (offset & 3);

  const pciConfigRead = async (target: number, offset: number, size: 1 | 2 | 4): Promise<number> => {
    const selected = select(target, offset, size);
    const value = size === 1 ? bus.inU8(port(offset)) : size === 2 ? bus.inU16(port(offset)) : bus.inU32(port(offset));
    return (await Promise.all([selected, value]))[1];
  };
  const pciConfigWrite = async (target: number, offset: number, size: 1 | 2 | 4, value: number): Promise<void> => {
    const selected = select(target, offset, size);
    const written = size === 1 ? bus.outU8(port(offset), value) : size === 2 ? bus.outU16(port(offset), value) : bus.outU32(port(offset), value);
    await Promise.all([selected, written]);
  };

  return {
    bus,
    qemu,
    accelerator,
    ramFile,
    memory: mapping && new GuestMemory([{ guestAddr: 0, bytes: mapping.bytes }]),
    workDir,
    pciConfigRead,
    pciConfigWrite,
    async pciFunctions() {
      const found: PciFunction[] = [];
      for (let device = 0; device < 32; device++) {
        const fn0 = await pciConfigRead(bdf(0, device, 0), 0, 4);
        if ((fn0 & 0xffff) === 0xffff) continue;
        // Header type bit 7: a multi-function device, whose other functions may be present too.
        const multi = ((await pciConfigRead(bdf(0, device, 0), 0x0e, 1)) & 0x80) !== 0;
        for (let fn = 0; fn < (multi ? 8 : 1); fn++) {
          const id = fn === 0 ? fn0 : await pciConfigRead(bdf(0, device, fn), 0, 4);
          if ((id & 0xffff) !== 0xffff) found.push({ bdf: bdf(0, device, fn), vendorId: id & 0xffff, deviceId: id >>> 16 });
        }
      }
      return found;
    },
    irqInterceptIn: (qomPath) => bus.interceptIrqIn(qomPath),
    close,
  };
}
