/**
 * Base address registers: sizing (write all ones, read back which address bits stick) and
 * placement in the windows the platform leaves for PCI. Under qtest no firmware runs, so this is
 * done before a driver starts, as a BIOS would.
 */
import { Command, ConfigReg, formatBdf, type ConfigAccess } from './config.ts';

/** One base address register after assignment. */
export interface PciBar {
  readonly index: number;
  readonly kind: 'memory' | 'io';
  /** Where the BAR now decodes: a guest-physical address, or a port for I/O BARs. */
  readonly addr: number;
  readonly size: number;
  /** A 64-bit memory BAR, which also occupies the next index. */
  readonly wide: boolean;
}

/** A half-open range [start, end) of addresses or ports. */
export interface BarWindow {
  readonly start: number;
  readonly end: number;
}

export interface BarWindows {
  /** Guest-physical addresses below 4 GiB, free of RAM and other devices. */
  readonly memory: BarWindow;
  readonly io: BarWindow;
}

const BAR_COUNT = 6;
const BAR_IO = 0x1;
const BAR_TYPE_MASK = 0x6;
const BAR_MEMORY_64 = 0x4;
const IO_ADDRESS_MASK = 0xffff_fffc;
const MEMORY_ADDRESS_MASK = 0xffff_fff0;
/** I/O BARs decode 16 bits of port address; the upper bits of a sized I/O BAR need not stick. */
const IO_SPACE_MASK = 0xffff_0000;
const U32 = 0x1_0000_0000;

function checkWindow(window: BarWindow, what: string, limit: number): void {
  if (!Number.isSafeInteger(window.start) || !Number.isSafeInteger(window.end) || window.start < 0 || window.end > limit || window.start >= window.end) {
    throw new RangeError(`${what} BAR window [0x${window.start.toString(16)}, 0x${window.end.toString(16)}) is not a non-empty range below 0x${limit.toString(16)}`);
  }
}

/** Hands out naturally aligned space in each window, upwards; space is never reclaimed. */
export class BarAllocator {
  private nextMemory: number;
  private nextIo: number;

  constructor(private readonly windows: BarWindows) {
    checkWindow(windows.memory, 'memory', U32);
    checkWindow(windows.io, 'I/O', 0x1_0000);
    this.nextMemory = windows.memory.start;
    this.nextIo = windows.io.start;
  }

  /**
   * Sizes every BAR of `target`, places it, and enables I/O, memory decoding and bus mastering.
   * 64-bit BARs are placed below 4 GiB too, which they allow.
   */
  async assign(config: ConfigAccess, target: number): Promise<PciBar[]> {
    const bars: PciBar[] = [];
    for (let index = 0; index < BAR_COUNT; index++) {
      const offset = ConfigReg.BAR0 + 4 * index;
      const original = await config.read(target, offset, 4);
      const io = (original & BAR_IO) !== 0;
      // A 64-bit BAR in the last register has no upper half: treat it as the 32-bit BAR it can only be.
      const wide = !io && (original & BAR_TYPE_MASK) === BAR_MEMORY_64 && index < BAR_COUNT - 1;
      await config.write(target, offset, 4, 0xffff_ffff);
      const mask = ((await config.read(target, offset, 4)) & (io ? IO_ADDRESS_MASK : MEMORY_ADDRESS_MASK)) >>> 0;
      let high = 0xffff_ffff;
      if (wide) {
        await config.write(target, offset + 4, 4, 0xffff_ffff);
        high = (await config.read(target, offset + 4, 4)) >>> 0;
      }
      if (mask === 0 && (!wide || high === 0)) {
        if (wide) index++;
        continue; // not implemented
      }
      if (wide && high !== 0xffff_ffff) {
        throw new Error(`BAR ${index} of ${formatBdf(target)} needs more than 4 GiB, which the memory window cannot hold`);
      }
      // The size is the lowest writable address bit.
      const size = (~(io ? mask | IO_SPACE_MASK : mask) >>> 0) + 1;
      const addr = this.place(io, size, `BAR ${index} (${size} bytes) of ${formatBdf(target)}`);
      await config.write(target, offset, 4, addr);
      if (wide) await config.write(target, offset + 4, 4, 0);
      bars.push({ index, kind: io ? 'io' : 'memory', addr, size, wide });
      if (wide) index++;
    }
    const command = await config.read(target, ConfigReg.COMMAND, 2);
    await config.write(target, ConfigReg.COMMAND, 2, command | Command.IO | Command.MEMORY | Command.BUS_MASTER);
    return bars;
  }

  private place(io: boolean, size: number, what: string): number {
    const window = io ? this.windows.io : this.windows.memory;
    const addr = Math.ceil((io ? this.nextIo : this.nextMemory) / size) * size;
    if (addr + size > window.end) throw new Error(`no room for ${what} in the ${io ? 'I/O' : 'memory'} window`);
    if (io) this.nextIo = addr + size;
    else this.nextMemory = addr + size;
    return addr;
  }
}
