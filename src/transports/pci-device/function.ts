/**
 * The device side of one PCI function (PCI Local Bus 3.0 §6): the 256-byte type-0 configuration
 * header a driver reads and writes, base address registers that answer sizing, a capability
 * list built once, and the INTx line. A function owns no device logic: its BARs are handed to
 * whoever implements them (virtio-pci, QXL), and its interrupts to whoever carries them (vfio-user).
 *
 * Every access comes from the driver through a client that is itself untrusted: offsets and
 * lengths outside the space read as zero and write nothing; only the bits a register defines as
 * writable change.
 */
import { CONFIG_SPACE_SIZE, Command, ConfigReg, STATUS_CAPABILITY_LIST } from '../pci/config.ts';

/** Header offsets the driver side has no use for, so pci/config.ts does not name them. */
const Reg = {
  CLASS_PROG: 0x09,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  INTERRUPT_LINE: 0x3c,
} as const;

/** Status register bit 3: the function is asserting INTx (PCI 3.0 §6.2.3). */
const STATUS_INTERRUPT = 0x08;
/** Command bits a type-0 function implements: memory, bus master, interrupt disable (and I/O space when it has an I/O BAR). */
const COMMAND_WRITABLE = Command.MEMORY | Command.BUS_MASTER | Command.INTX_DISABLE;
const FIRST_CAPABILITY = 0x40;
const BAR_COUNT = 6;
const BAR_MEMORY_64 = 0x4;
const BAR_PREFETCHABLE = 0x8;
/** Bit 0 of a BAR: it decodes I/O space (PCI 3.0 §6.2.5.1); address bits start at bit 2. */
const BAR_IO_SPACE = 0x1;
/** Largest I/O BAR: x86 I/O space is 64 KiB, and PCI 3.0 §6.2.5.1 allows 256 bytes per BAR. */
const MAX_IO_BAR = 256;

/** One region a BAR decodes: its size and who serves its bytes. */
export interface BarHandler {
  /** A power of two, at least 16 bytes (PCI 3.0 §6.2.5.1); the size the driver's sizing reads back. */
  readonly size: number;
  /** A 64-bit BAR (uses the next index too). */
  readonly wide?: boolean;
  readonly prefetchable?: boolean;
  /** The BAR decodes I/O space (port I/O) rather than memory; at most 256 bytes. */
  readonly io?: boolean;
  /**
   * Memory that backs the whole region, shared with a client that maps it (vfio-user hands the
   * descriptor over so guest accesses reach these pages without a message): a memfd of exactly
   * `size` bytes, which read and write serve too when the client does not map it.
   */
  readonly sharedFd?: number;
  /** Bytes [offset, offset+data.length) of the region; the caller has checked they are inside it. */
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

export interface PciIdentity {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly subsystemVendorId: number;
  readonly subsystemId: number;
  readonly revision: number;
  /** Class code: base class, subclass, programming interface (24 bits). */
  readonly classCode: number;
}

/** A capability to place in the list: its id and the bytes after the id and next pointer. */
export interface CapabilitySpec {
  readonly id: number;
  readonly body: Uint8Array;
  /** Bits of the body the driver may write (same length as body; absent: read-only). */
  readonly writable?: Uint8Array;
}

export interface PciFunctionOptions {
  readonly identity: PciIdentity;
  /** BARs by index; a wide BAR leaves the next index empty. */
  readonly bars: readonly (BarHandler | undefined)[];
  readonly capabilities: readonly CapabilitySpec[];
  /** INTA# (1) or none (0). */
  readonly interruptPin: 0 | 1;
  /** Called after the driver wrote configuration bytes [offset, offset+length). */
  readonly configWritten?: (offset: number, length: number) => void;
  /** Called before the driver reads configuration bytes [offset, offset+length), to refresh what they show. */
  readonly configRead?: (offset: number, length: number) => void;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

export class PciFunction {
  private readonly space = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly view = new DataView(this.space.buffer);
  /** Per byte, the bits the driver may change. */
  private readonly writable = new Uint8Array(CONFIG_SPACE_SIZE);
  /** Offset of each capability, by position in the options' list. */
  readonly capabilityOffsets: readonly number[];
  readonly bars: readonly (BarHandler | undefined)[];
  private intxLevel = false;
  /** The space as built, which a reset returns to. */
  private readonly initial: Uint8Array;

  constructor(private readonly options: PciFunctionOptions) {
    this.bars = options.bars;
    const { identity } = options;
    const v = this.view;
    v.setUint16(ConfigReg.VENDOR_ID, identity.vendorId, true);
    v.setUint16(ConfigReg.DEVICE_ID, identity.deviceId, true);
    v.setUint8(ConfigReg.REVISION_ID, identity.revision);
    v.setUint8(Reg.CLASS_PROG, identity.classCode & 0xff);
    v.setUint16(Reg.CLASS_PROG + 1, identity.classCode >>> 8, true);
    v.setUint16(Reg.SUBSYSTEM_VENDOR_ID, identity.subsystemVendorId, true);
    v.setUint16(ConfigReg.SUBSYSTEM_ID, identity.subsystemId, true);
    v.setUint8(ConfigReg.INTERRUPT_PIN, options.interruptPin);
    v.setUint16(ConfigReg.COMMAND, 0, true);
    this.writable.fill(0xff, Reg.CACHE_LINE_SIZE, Reg.LATENCY_TIMER + 1);
    this.writable[Reg.INTERRUPT_LINE] = 0xff;
    const commandWritable = COMMAND_WRITABLE | (options.bars.some((b) => b?.io === true) ? Command.IO : 0);
    this.writable[ConfigReg.COMMAND] = commandWritable & 0xff;
    this.writable[ConfigReg.COMMAND + 1] = commandWritable >>> 8;
    this.placeBars(options.bars);
    this.capabilityOffsets = this.placeCapabilities(options.capabilities);
    this.initial = this.space.slice();
  }

  /** The BAR registers: type bits fixed, address bits below the size read as zero (sizing). */
  private placeBars(bars: readonly (BarHandler | undefined)[]): void {
    if (bars.length > BAR_COUNT) throw new RangeError(`a type-0 function has ${BAR_COUNT} BARs, not ${bars.length}`);
    bars.forEach((bar, i) => {
      if (bar === undefined) return;
      if (!isPowerOfTwo(bar.size) || bar.size < 16) throw new RangeError(`BAR ${i} size ${bar.size} is not a power of two of at least 16 bytes`);
      if (bar.wide === true && (i === BAR_COUNT - 1 || bars[i + 1] !== undefined)) throw new RangeError(`64-bit BAR ${i} needs BAR ${i + 1} free`);
      if (bar.wide !== true && bar.size > 2 ** 31) throw new RangeError(`BAR ${i} of ${bar.size} bytes must be 64-bit`);
      const at = ConfigReg.BAR0 + 4 * i;
      if (bar.io === true) {
        if (bar.wide === true || bar.prefetchable === true || bar.size > MAX_IO_BAR) throw new RangeError(`I/O BAR ${i} must be 32-bit, not prefetchable, and at most ${MAX_IO_BAR} bytes`);
        this.view.setUint32(at, BAR_IO_SPACE, true);
        this.setWritable(at, 4, (0x1_0000_0000 - bar.size) & 0xffff_fffc);
        return;
      }
      const type = (bar.wide === true ? BAR_MEMORY_64 : 0) | (bar.prefetchable === true ? BAR_PREFETCHABLE : 0);
      this.view.setUint32(at, type, true);
      // Address bits at and above log2(size) are writable; the low 4 bits are the type.
      const mask = bar.size >= 2 ** 32 ? 0 : (0x1_0000_0000 - bar.size) >>> 0;
      this.setWritable(at, 4, mask & 0xffff_fff0);
      if (bar.wide === true) {
        const highMask = bar.size >= 2 ** 32 ? (0x1_0000_0000 - bar.size / 2 ** 32) >>> 0 : 0xffff_ffff;
        this.setWritable(at + 4, 4, highMask);
      }
    });
  }

  /** Lay the capabilities out from 0x40, dword-aligned, chained in the given order. */
  private placeCapabilities(caps: readonly CapabilitySpec[]): number[] {
    const offsets: number[] = [];
    let at = FIRST_CAPABILITY;
    let previousNext = ConfigReg.CAPABILITIES_POINTER;
    for (const cap of caps) {
      const length = 2 + cap.body.length;
      if (at + length > CONFIG_SPACE_SIZE) throw new RangeError(`capability 0x${cap.id.toString(16)} does not fit in configuration space`);
      this.space[previousNext] = at;
      this.space[at] = cap.id;
      this.space.set(cap.body, at + 2);
      if (cap.writable !== undefined) this.writable.set(cap.writable.subarray(0, cap.body.length), at + 2);
      offsets.push(at);
      previousNext = at + 1;
      at += (length + 3) & ~3;
    }
    if (caps.length > 0) this.view.setUint16(ConfigReg.STATUS, STATUS_CAPABILITY_LIST, true);
    return offsets;
  }

  private setWritable(at: number, width: number, mask: number): void {
    for (let i = 0; i < width; i++) this.writable[at + i] = (mask >>> (8 * i)) & 0xff;
  }

  /** Configuration bytes [offset, offset+out.length); anything outside the space reads as zero. */
  readConfig(offset: number, out: Uint8Array): void {
    out.fill(0);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= CONFIG_SPACE_SIZE) return;
    const end = Math.min(CONFIG_SPACE_SIZE, offset + out.length);
    this.options.configRead?.(offset, end - offset);
    out.set(this.space.subarray(offset, end));
  }

  /** The driver writes configuration bytes: each bit changes only where the register allows it. */
  writeConfig(offset: number, data: Uint8Array): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= CONFIG_SPACE_SIZE) return;
    const end = Math.min(CONFIG_SPACE_SIZE, offset + data.length);
    for (let at = offset; at < end; at++) {
      const mask = this.writable[at];
      this.space[at] = (this.space[at] & ~mask) | (data[at - offset] & mask);
    }
    this.updateStatus();
    this.options.configWritten?.(offset, end - offset);
  }

  /** A configuration dword/word/byte the function itself reads (capability registers). */
  configView(): DataView {
    return this.view;
  }

  /**
   * The address the driver placed BAR `index` at, or undefined while that BAR is absent, unassigned
   * (zero), or its decoding (memory or I/O space in the command register) is off.
   */
  barAddress(index: number): number | undefined {
    const bar = this.bars[index];
    if (bar === undefined) return undefined;
    const at = ConfigReg.BAR0 + 4 * index;
    const low = this.view.getUint32(at, true);
    const enabled = this.command & (bar.io === true ? Command.IO : Command.MEMORY);
    const address = bar.io === true ? (low & 0xffff_fffc) >>> 0 : ((low & 0xffff_fff0) >>> 0) + (bar.wide === true ? this.view.getUint32(at + 4, true) * 2 ** 32 : 0);
    return enabled === 0 || address === 0 ? undefined : address;
  }

  get command(): number {
    return this.view.getUint16(ConfigReg.COMMAND, true);
  }

  /** INTx as the function drives it: the device's level, unless Interrupt Disable is set (PCI 3.0 §6.2.2). */
  get intxAsserted(): boolean {
    return this.intxLevel && !(this.command & Command.INTX_DISABLE) && this.options.interruptPin !== 0;
  }

  /** The device raises or lowers its interrupt condition; Status.Interrupt follows it either way. */
  setIntx(level: boolean): void {
    this.intxLevel = level;
    this.updateStatus();
  }

  private updateStatus(): void {
    const status = this.view.getUint16(ConfigReg.STATUS, true);
    this.view.setUint16(ConfigReg.STATUS, this.intxLevel ? status | STATUS_INTERRUPT : status & ~STATUS_INTERRUPT, true);
  }

  /** Function-level reset: command, BAR addresses and capability registers the driver wrote go back. */
  reset(): void {
    this.space.set(this.initial);
    this.intxLevel = false;
  }
}
