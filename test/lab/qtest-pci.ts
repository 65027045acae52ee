/**
 * PCI as firmware sees it on a PC, done over a GuestBus: configuration space through mechanism #1
 * (an address register at port 0xcf8, a data window at 0xcfc), enumeration of bus 0, and BAR
 * assignment. Under qtest no firmware runs, so the test plays its part before a driver starts.
 */
import type { GuestBus } from '../../src/transports/qtest/guest-bus.ts';

/** Bus/device/function of a PCI function, packed as in a configuration address: bus<<8 | dev<<3 | fn. */
export function bdf(bus: number, device: number, fn: number): number {
  if (!Number.isInteger(bus) || bus < 0 || bus > 255) throw new RangeError(`PCI bus ${bus} is outside 0..255`);
  if (!Number.isInteger(device) || device < 0 || device > 31) throw new RangeError(`PCI device ${device} is outside 0..31`);
  if (!Number.isInteger(fn) || fn < 0 || fn > 7) throw new RangeError(`PCI function ${fn} is outside 0..7`);
  return (bus << 8) | (device << 3) | fn;
}

export interface PciFunction {
  readonly bdf: number;
  readonly vendorId: number;
  readonly deviceId: number;
}

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

const CONFIG_ADDRESS = 0xcf8;
const CONFIG_DATA = 0xcfc;

const COMMAND = 0x04;
const COMMAND_IO = 0x1;
const COMMAND_MEMORY = 0x2;
const COMMAND_BUS_MASTER = 0x4;
const HEADER_TYPE = 0x0e;
const BAR0 = 0x10;
const BAR_IO = 0x1;
const BAR_MEMORY_64 = 0x4;

/**
 * Where assigned BARs go on q35 with less than 2816 MiB of RAM: memory from 0xe0000000 (above RAM
 * and the unused PCIe MMCONFIG window) up to the IOAPIC at 0xfec00000; ports from 0xc000.
 */
const MEMORY_WINDOW = { start: 0xe000_0000, end: 0xfec0_0000 };
const IO_WINDOW = { start: 0xc000, end: 0x1_0000 };

export class PciConfig {
  /** Next free address in each window: BARs are handed out upwards and never reclaimed. */
  private nextMemory = MEMORY_WINDOW.start;
  private nextIo = IO_WINDOW.start;

  constructor(private readonly bus: GuestBus) {}

  async read(target: number, offset: number, size: 1 | 2 | 4): Promise<number> {
    // Both accesses are issued before either is awaited, so no other caller's selection comes between.
    const selected = this.select(target, offset, size);
    const port = CONFIG_DATA + (offset & 3);
    const value = size === 1 ? this.bus.inU8(port) : size === 2 ? this.bus.inU16(port) : this.bus.inU32(port);
    return (await Promise.all([selected, value]))[1];
  }

  async write(target: number, offset: number, size: 1 | 2 | 4, value: number): Promise<void> {
    const selected = this.select(target, offset, size);
    const port = CONFIG_DATA + (offset & 3);
    const written = size === 1 ? this.bus.outU8(port, value) : size === 2 ? this.bus.outU16(port, value) : this.bus.outU32(port, value);
    await Promise.all([selected, written]);
  }

  /** Functions present on bus 0 (vendor id not 0xffff), in slot order. */
  async functions(): Promise<PciFunction[]> {
    const found: PciFunction[] = [];
    for (let device = 0; device < 32; device++) {
      const fn0 = await this.read(bdf(0, device, 0), 0, 4);
      if ((fn0 & 0xffff) === 0xffff) continue;
      // Header type bit 7: a multi-function device, whose other functions may be present too.
      const multi = ((await this.read(bdf(0, device, 0), HEADER_TYPE, 1)) & 0x80) !== 0;
      for (let fn = 0; fn < (multi ? 8 : 1); fn++) {
        const id = fn === 0 ? fn0 : await this.read(bdf(0, device, fn), 0, 4);
        if ((id & 0xffff) !== 0xffff) found.push({ bdf: bdf(0, device, fn), vendorId: id & 0xffff, deviceId: id >>> 16 });
      }
    }
    return found;
  }

  /**
   * Sizes every BAR of `target` (write all ones, read back the mask), places it naturally aligned
   * in its window, and enables I/O, memory decoding and bus mastering. 64-bit BARs are placed
   * below 4 GiB too, which they allow.
   */
  async assignBars(target: number): Promise<PciBar[]> {
    const bars: PciBar[] = [];
    for (let index = 0; index < 6; index++) {
      const offset = BAR0 + 4 * index;
      const original = await this.read(target, offset, 4);
      const io = (original & BAR_IO) !== 0;
      const wide = !io && (original & 0x6) === BAR_MEMORY_64;
      await this.write(target, offset, 4, 0xffff_ffff);
      const mask = (await this.read(target, offset, 4)) & (io ? 0xffff_fffc : 0xffff_fff0);
      let high = 0xffff_ffff;
      if (wide) {
        await this.write(target, offset + 4, 4, 0xffff_ffff);
        high = await this.read(target, offset + 4, 4);
      }
      if (mask === 0 && (!wide || high === 0)) {
        if (wide) index++;
        continue; // not implemented
      }
      if (wide && high !== 0xffff_ffff) throw new Error(`BAR ${index} of ${target.toString(16)} needs more than 4 GiB, which this window cannot hold`);
      // The size is the lowest writable address bit (I/O BARs decode 16 bits only).
      const size = (~(io ? mask | 0xffff_0000 : mask) >>> 0) + 1;
      const window = io ? IO_WINDOW : MEMORY_WINDOW;
      const next = io ? this.nextIo : this.nextMemory;
      const addr = Math.ceil(next / size) * size;
      if (addr + size > window.end) throw new Error(`no room for BAR ${index} (${size} bytes) of ${target.toString(16)}`);
      if (io) this.nextIo = addr + size;
      else this.nextMemory = addr + size;
      await this.write(target, offset, 4, addr);
      if (wide) await this.write(target, offset + 4, 4, 0);
      bars.push({ index, kind: io ? 'io' : 'memory', addr, size, wide });
      if (wide) index++;
    }
    const command = await this.read(target, COMMAND, 2);
    await this.write(target, COMMAND, 2, command | COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER);
    return bars;
  }

  private select(target: number, offset: number, size: number): Promise<void> {
    if (!Number.isInteger(target) || target < 0 || target > 0xffff) throw new RangeError(`PCI address ${target} is not a bus/device/function`);
    if (!Number.isInteger(offset) || offset < 0 || offset + size > 256 || offset % size !== 0) {
      throw new RangeError(`PCI configuration offset ${offset} is not a ${size}-byte aligned offset below 256`);
    }
    return this.bus.outU32(CONFIG_ADDRESS, (0x8000_0000 | (target << 8) | (offset & 0xfc)) >>> 0);
  }
}
