/**
 * What a driver-side transport needs from a machine it does not run inside: the guest-physical
 * address space (RAM and MMIO BARs alike), x86 port I/O (PCI configuration mechanism #1 lives at
 * 0xcf8/0xcfc) and the machine's interrupt lines. A virtio-pci driver transport depends on this
 * interface only, so it works the same whether the bus is reached over QEMU's qtest protocol or
 * anything else that can move bytes.
 *
 * Every call is asynchronous because the bus lies in another process; calls issued without
 * awaiting the previous one are still performed in issue order, so a driver may pipeline a burst
 * of register writes and await only the last.
 *
 * Addresses are JavaScript numbers below 2^53 (see src/virtio/memory.ts for why that is enough);
 * 64-bit values are bigint because register contents, unlike addresses, use every bit.
 */

export interface InterruptEvent {
  /** Interrupt line number as the machine names it (for a PC's IOAPIC, the GSI). */
  readonly line: number;
  /** true when the line was raised, false when lowered. */
  readonly raised: boolean;
}

export type InterruptListener = (event: InterruptEvent) => void;

export interface GuestBus {
  /** `length` bytes at `addr`, as the guest would see them. */
  read(addr: number, length: number): Promise<Uint8Array>;
  write(addr: number, bytes: Uint8Array): Promise<void>;
  /** Sets `length` bytes at `addr` to `byte`. */
  fill(addr: number, length: number, byte: number): Promise<void>;

  /** Little-endian accesses of one width, as a CPU load or store of that width (MMIO registers care). */
  readU8(addr: number): Promise<number>;
  readU16(addr: number): Promise<number>;
  readU32(addr: number): Promise<number>;
  readU64(addr: number): Promise<bigint>;
  writeU8(addr: number, value: number): Promise<void>;
  writeU16(addr: number, value: number): Promise<void>;
  writeU32(addr: number, value: number): Promise<void>;
  writeU64(addr: number, value: bigint): Promise<void>;

  /** Port I/O (ports 0..0xffff). */
  inU8(port: number): Promise<number>;
  inU16(port: number): Promise<number>;
  inU32(port: number): Promise<number>;
  outU8(port: number, value: number): Promise<void>;
  outU16(port: number, value: number): Promise<void>;
  outU32(port: number, value: number): Promise<void>;

  /** Level of `line` as last reported (false before any report). */
  interruptLevel(line: number): boolean;
  /** Calls `listener` on every level change of an intercepted line; returns the unsubscribe function. */
  onInterrupt(listener: InterruptListener): () => void;
}
