/**
 * One PCI function seen from a driver in the same process: a GuestBus whose memory and port
 * accesses land in the function's BARs (at the addresses its BAR registers hold) and whose one
 * interrupt line follows the function's INTx, plus the ConfigAccess a BarAllocator and a driver
 * use. It lets a driver written for QEMU's devices run against paravirt's own.
 */
import type { PciFunction as PciDeviceFunction } from '../../../src/transports/pci-device/function.ts';
import type { ConfigAccess, ConfigWidth } from '../../../src/transports/pci/config.ts';
import type { GuestBus, InterruptListener } from '../../../src/transports/qtest/guest-bus.ts';

export const FUNCTION_TARGET = 0;
export const INTX_LINE = 11;

export class FunctionBus implements GuestBus, ConfigAccess {
  private readonly listeners = new Set<InterruptListener>();
  private level = false;

  constructor(private readonly pci: PciDeviceFunction) {}

  /** The function's INTx changed level (wire this to the device's interrupt sink). */
  intx(asserted: boolean): void {
    if (asserted === this.level) return;
    this.level = asserted;
    for (const l of this.listeners) l({ line: INTX_LINE, raised: asserted });
  }

  // --- configuration space ---

  async read(target: number, offset: number, size: ConfigWidth): Promise<number>;
  async read(addr: number, length: number): Promise<Uint8Array>;
  async read(a: number, b: number, size?: ConfigWidth): Promise<number | Uint8Array> {
    if (size !== undefined) {
      const out = new Uint8Array(size);
      this.pci.readConfig(b, out);
      return out.reduceRight((v, byte) => v * 256 + byte, 0);
    }
    return this.memory(a, b, 'read');
  }

  async write(target: number, offset: number, size: ConfigWidth, value: number): Promise<void>;
  async write(addr: number, bytes: Uint8Array): Promise<void>;
  async write(a: number, b: number | Uint8Array, size?: ConfigWidth, value?: number): Promise<void> {
    if (typeof b === 'number') {
      const bytes = new Uint8Array(size!);
      for (let i = 0; i < size!; i++) bytes[i] = (value! >>> (8 * i)) & 0xff;
      this.pci.writeConfig(b, bytes);
      return;
    }
    this.memory(a, b.length, 'write', b);
  }

  // --- memory and ports ---

  /** The BAR of the given space decoding [addr, addr+length), and the offset in it. */
  private locate(addr: number, length: number, io: boolean): { index: number; offset: number } {
    for (let index = 0; index < this.pci.bars.length; index++) {
      const bar = this.pci.bars[index];
      const base = this.pci.barAddress(index);
      if (bar === undefined || base === undefined || (bar.io === true) !== io) continue;
      if (addr >= base && addr + length <= base + bar.size) return { index, offset: addr - base };
    }
    throw new RangeError(`${length} bytes at ${io ? 'port' : 'address'} 0x${addr.toString(16)} reach no BAR`);
  }

  private memory(addr: number, length: number, op: 'read' | 'write', data: Uint8Array = new Uint8Array(length)): Uint8Array {
    const { index, offset } = this.locate(addr, length, false);
    this.pci.bars[index]![op](offset, data);
    return data;
  }

  async fill(addr: number, length: number, byte: number): Promise<void> {
    this.memory(addr, length, 'write', new Uint8Array(length).fill(byte));
  }

  private async load(addr: number, width: number): Promise<bigint> {
    const b = this.memory(addr, width, 'read');
    return b.reduceRight((v, byte) => (v << 8n) | BigInt(byte), 0n);
  }

  private async store(addr: number, width: number, value: bigint): Promise<void> {
    const b = new Uint8Array(width);
    for (let i = 0; i < width; i++) b[i] = Number((value >> BigInt(8 * i)) & 0xffn);
    this.memory(addr, width, 'write', b);
  }

  readU8 = async (addr: number): Promise<number> => Number(await this.load(addr, 1));
  readU16 = async (addr: number): Promise<number> => Number(await this.load(addr, 2));
  readU32 = async (addr: number): Promise<number> => Number(await this.load(addr, 4));
  readU64 = (addr: number): Promise<bigint> => this.load(addr, 8);
  writeU8 = (addr: number, value: number): Promise<void> => this.store(addr, 1, BigInt(value));
  writeU16 = (addr: number, value: number): Promise<void> => this.store(addr, 2, BigInt(value));
  writeU32 = (addr: number, value: number): Promise<void> => this.store(addr, 4, BigInt(value));
  writeU64 = (addr: number, value: bigint): Promise<void> => this.store(addr, 8, value);

  private async port(port: number, width: number, value?: number): Promise<number> {
    const { index, offset } = this.locate(port, width, true);
    const data = new Uint8Array(width);
    if (value === undefined) {
      this.pci.bars[index]!.read(offset, data);
      return data.reduceRight((v, byte) => v * 256 + byte, 0);
    }
    for (let i = 0; i < width; i++) data[i] = (value >>> (8 * i)) & 0xff;
    this.pci.bars[index]!.write(offset, data);
    return 0;
  }

  inU8 = (port: number): Promise<number> => this.port(port, 1);
  inU16 = (port: number): Promise<number> => this.port(port, 2);
  inU32 = (port: number): Promise<number> => this.port(port, 4);
  outU8 = async (port: number, value: number): Promise<void> => void (await this.port(port, 1, value));
  outU16 = async (port: number, value: number): Promise<void> => void (await this.port(port, 2, value));
  outU32 = async (port: number, value: number): Promise<void> => void (await this.port(port, 4, value));

  interruptLevel(line: number): boolean {
    return line === INTX_LINE && this.level;
  }

  onInterrupt(listener: InterruptListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
