/**
 * Register accesses to one virtio structure: offsets relative to the structure, each checked to
 * stay inside it, turned into loads and stores of the width asked for (§4.1.3.1: registers are
 * accessed with their own width) in memory space or port space, as the BAR decodes.
 */
import type { GuestBus } from '../qtest/guest-bus.ts';
import type { VirtioStructure } from './virtio-structures.ts';

export type RegisterWidth = 1 | 2 | 4;

export class BarRegion {
  /** Bus address (guest-physical or port) of the structure's first byte. */
  readonly base: number;
  readonly length: number;
  private readonly io: boolean;

  constructor(
    private readonly bus: GuestBus,
    structure: VirtioStructure,
  ) {
    this.base = structure.bar.addr + structure.offset;
    this.length = structure.length;
    this.io = structure.bar.kind === 'io';
  }

  read(at: number, width: RegisterWidth): Promise<number> {
    const addr = this.address(at, width);
    if (this.io) return width === 1 ? this.bus.inU8(addr) : width === 2 ? this.bus.inU16(addr) : this.bus.inU32(addr);
    return width === 1 ? this.bus.readU8(addr) : width === 2 ? this.bus.readU16(addr) : this.bus.readU32(addr);
  }

  write(at: number, width: RegisterWidth, value: number): Promise<void> {
    const addr = this.address(at, width);
    if (this.io) return width === 1 ? this.bus.outU8(addr, value) : width === 2 ? this.bus.outU16(addr, value) : this.bus.outU32(addr, value);
    return width === 1 ? this.bus.writeU8(addr, value) : width === 2 ? this.bus.writeU16(addr, value) : this.bus.writeU32(addr, value);
  }

  /** The bus address of [at, at+width), which must lie inside the structure. */
  private address(at: number, width: number): number {
    if (!Number.isSafeInteger(at) || at < 0 || at + width > this.length) {
      throw new RangeError(`a ${width}-byte access at offset ${at} is outside a ${this.length}-byte virtio structure`);
    }
    return this.base + at;
  }
}
