/**
 * PCI configuration mechanism #1 over a GuestBus: port 0xcf8 selects bus/device/function and
 * dword, port 0xcfc (+0..3) moves the data. With it, what firmware would do on a PC: enumerate
 * bus 0 and assign BARs.
 */
import type { GuestBus } from '../qtest/guest-bus.ts';
import { BarAllocator, type BarWindows, type PciBar } from './bars.ts';
import { CONFIG_SPACE_SIZE, listFunctions, type ConfigAccess, type ConfigWidth, type PciFunction } from './config.ts';

const CONFIG_ADDRESS = 0xcf8;
const CONFIG_DATA = 0xcfc;
const CONFIG_ENABLE = 0x8000_0000;

/** Configuration mechanism #1 over a GuestBus, with enumeration of bus 0 and BAR assignment. */
export class PciConfig implements ConfigAccess {
  private readonly bars: BarAllocator;

  /** `windows`: where assignBars may place memory and I/O BARs (see q35.ts for a PC's). */
  constructor(
    private readonly bus: GuestBus,
    windows: BarWindows,
  ) {
    this.bars = new BarAllocator(windows);
  }

  async read(target: number, offset: number, size: ConfigWidth): Promise<number> {
    // Both accesses are issued before either is awaited, so no other caller's selection comes between.
    const selected = this.select(target, offset, size);
    const port = CONFIG_DATA + (offset & 3);
    const value = size === 1 ? this.bus.inU8(port) : size === 2 ? this.bus.inU16(port) : this.bus.inU32(port);
    return (await Promise.all([selected, value]))[1];
  }

  async write(target: number, offset: number, size: ConfigWidth, value: number): Promise<void> {
    const selected = this.select(target, offset, size);
    const port = CONFIG_DATA + (offset & 3);
    const written = size === 1 ? this.bus.outU8(port, value) : size === 2 ? this.bus.outU16(port, value) : this.bus.outU32(port, value);
    await Promise.all([selected, written]);
  }

  /** Functions present on bus 0, in slot order. */
  functions(): Promise<PciFunction[]> {
    return listFunctions(this);
  }

  /** What firmware does before a driver runs: size and place every BAR of `target`, enable decoding and bus mastering. */
  assignBars(target: number): Promise<PciBar[]> {
    return this.bars.assign(this, target);
  }

  private select(target: number, offset: number, size: ConfigWidth): Promise<void> {
    if (!Number.isInteger(target) || target < 0 || target > 0xffff) throw new RangeError(`PCI address ${target} is not a bus/device/function`);
    if (!Number.isInteger(offset) || offset < 0 || offset + size > CONFIG_SPACE_SIZE || offset % size !== 0) {
      throw new RangeError(`PCI configuration offset ${offset} is not a ${size}-byte aligned offset below ${CONFIG_SPACE_SIZE}`);
    }
    return this.bus.outU32(CONFIG_ADDRESS, (CONFIG_ENABLE | (target << 8) | (offset & 0xfc)) >>> 0);
  }
}
