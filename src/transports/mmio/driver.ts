/**
 * The driver side of virtio-mmio (§4.2.3): the register protocol a guest driver speaks, over any
 * MmioRegisterAccess — in-process a direct call into an MmioDevice, in an emulator a window of
 * guest-physical addresses.
 */
import type { DmaAllocator, DriverTransport, InterruptHandlers } from '../../virtio/driver.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import type { QueueAddresses } from '../../virtio/queue.ts';
import { MMIO_MAGIC, MMIO_VERSION, MmioInterrupt, MmioReg } from './registers.ts';
import type { AccessWidth, MmioRegisterAccess } from './registers.ts';

/**
 * virtio-mmio has no queue-count register: a driver probes QueueSizeMax until it reads 0.
 * The probe stops here so a device claiming endless queues cannot stall the driver.
 */
const MAX_PROBED_QUEUES = 1024;

/** Rounds of one interrupt service; each new event normally needs one. */
const MAX_INTERRUPT_ROUNDS = 64;

const U32 = 0x1_0000_0000;

export class MmioDriverTransport implements DriverTransport {
  private handlers: InterruptHandlers | undefined;
  /** Queues this driver enabled: a used-buffer interrupt does not say which one (§4.2.2). */
  private readonly enabled = new Set<number>();

  constructor(
    private readonly regs: MmioRegisterAccess,
    readonly memory: GuestMemory,
    readonly dma: DmaAllocator,
  ) {}

  private read32(offset: number): number {
    return this.regs.read(offset, 4) >>> 0;
  }

  private write32(offset: number, value: number): void {
    this.regs.write(offset, 4, value >>> 0);
  }

  /** §4.2.3.1.1: check MagicValue and Version before anything else. */
  async deviceId(): Promise<number> {
    const magic = this.read32(MmioReg.MAGIC_VALUE);
    if (magic !== MMIO_MAGIC) throw new Error(`not a virtio-mmio device: MagicValue is 0x${magic.toString(16)}`);
    const version = this.read32(MmioReg.VERSION);
    if (version !== MMIO_VERSION) {
      throw new Error(`virtio-mmio Version ${version} is not supported (only ${MMIO_VERSION}, the non-legacy interface)`);
    }
    return this.read32(MmioReg.DEVICE_ID);
  }

  async deviceFeatures(): Promise<bigint> {
    this.write32(MmioReg.DEVICE_FEATURES_SEL, 0);
    const lo = this.read32(MmioReg.DEVICE_FEATURES);
    this.write32(MmioReg.DEVICE_FEATURES_SEL, 1);
    const hi = this.read32(MmioReg.DEVICE_FEATURES);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  async setDriverFeatures(features: bigint): Promise<void> {
    if (features < 0n || features >> 64n !== 0n) {
      throw new RangeError(`driver features 0x${features.toString(16)} do not fit in 64 bits`);
    }
    this.write32(MmioReg.DRIVER_FEATURES_SEL, 0);
    this.write32(MmioReg.DRIVER_FEATURES, Number(features & 0xffff_ffffn));
    this.write32(MmioReg.DRIVER_FEATURES_SEL, 1);
    this.write32(MmioReg.DRIVER_FEATURES, Number(features >> 32n));
  }

  async getStatus(): Promise<number> {
    return this.read32(MmioReg.STATUS);
  }

  async setStatus(status: number): Promise<void> {
    this.write32(MmioReg.STATUS, status);
  }

  async reset(): Promise<void> {
    this.write32(MmioReg.STATUS, 0);
    this.enabled.clear();
    // The register file resets synchronously; a device that does not is broken, not slow.
    const status = this.read32(MmioReg.STATUS);
    if (status !== 0) throw new Error(`virtio-mmio device did not reset: Status reads 0x${status.toString(16)}`);
  }

  async configGeneration(): Promise<number> {
    return this.read32(MmioReg.CONFIG_GENERATION);
  }

  /**
   * Config space accesses as wide as alignment and length allow, so that each whole 8/16/32-bit
   * field is read with one access of its width (§4.2.2.2).
   */
  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    for (let at = 0; at < length; ) {
      const width = accessWidth(offset + at, length - at);
      let v = this.regs.read(MmioReg.CONFIG + offset + at, width);
      for (let i = 0; i < width; i++, v = Math.floor(v / 256)) out[at + i] = v & 0xff;
      at += width;
    }
    return out;
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    for (let at = 0; at < data.length; ) {
      const width = accessWidth(offset + at, data.length - at);
      let v = 0;
      for (let i = width - 1; i >= 0; i--) v = v * 256 + data[at + i];
      this.regs.write(MmioReg.CONFIG + offset + at, width, v);
      at += width;
    }
  }

  async numQueues(): Promise<number> {
    let n = 0;
    while (n < MAX_PROBED_QUEUES && (await this.queueMaxSize(n)) !== 0) n++;
    return n;
  }

  async queueMaxSize(index: number): Promise<number> {
    this.write32(MmioReg.QUEUE_SEL, index);
    return this.read32(MmioReg.QUEUE_SIZE_MAX);
  }

  /** §4.2.3.2 virtqueue configuration, then a read-back: a device that refuses leaves QueueReady 0. */
  async enableQueue(index: number, size: number, addrs: QueueAddresses): Promise<void> {
    this.write32(MmioReg.QUEUE_SEL, index);
    if (this.read32(MmioReg.QUEUE_READY) !== 0) throw new Error(`virtio-mmio queue ${index} is already in use`);
    const max = this.read32(MmioReg.QUEUE_SIZE_MAX);
    if (max === 0) throw new Error(`virtio-mmio queue ${index} does not exist`);
    if (size > max) throw new RangeError(`queue ${index} size ${size} exceeds the device's maximum ${max}`);
    this.write32(MmioReg.QUEUE_SIZE, size);
    this.writeAddress(MmioReg.QUEUE_DESC_LOW, addrs.desc);
    this.writeAddress(MmioReg.QUEUE_DRIVER_LOW, addrs.driver);
    this.writeAddress(MmioReg.QUEUE_DEVICE_LOW, addrs.device);
    this.write32(MmioReg.QUEUE_READY, 1);
    if (this.read32(MmioReg.QUEUE_READY) !== 1) {
      throw new Error(`virtio-mmio device refused queue ${index} of size ${size}`);
    }
    this.enabled.add(index);
  }

  /** Low half at `lowReg`, high half at the next register. */
  private writeAddress(lowReg: number, addr: number): void {
    this.write32(lowReg, addr % U32);
    this.write32(lowReg + 4, Math.floor(addr / U32));
  }

  notify(index: number): void {
    this.write32(MmioReg.QUEUE_NOTIFY, index);
  }

  setInterruptHandlers(handlers: InterruptHandlers): void {
    this.handlers = handlers;
  }

  /**
   * Service the interrupt line: read InterruptStatus, acknowledge what was read, dispatch; again
   * until it reads 0, so an event raised while the handlers ran is not lost. Undefined bits are
   * ignored (§4.2.2.2). A device whose status never clears gets a bounded number of rounds.
   */
  interrupt(): void {
    for (let round = 0; round < MAX_INTERRUPT_ROUNDS; round++) {
      const status = this.read32(MmioReg.INTERRUPT_STATUS) & (MmioInterrupt.USED_BUFFER | MmioInterrupt.CONFIG_CHANGE);
      if (status === 0) return;
      this.write32(MmioReg.INTERRUPT_ACK, status);
      const h = this.handlers;
      if (h === undefined) continue;
      if (status & MmioInterrupt.CONFIG_CHANGE) h.config();
      if (status & MmioInterrupt.USED_BUFFER) for (const q of this.enabled) h.queue(q);
    }
  }

  async close(): Promise<void> {
    this.handlers = undefined;
    this.enabled.clear();
  }
}

/** The widest access (4, 2 or 1 bytes) that is aligned at `offset` and fits in `left` bytes. */
function accessWidth(offset: number, left: number): AccessWidth {
  if (offset % 4 === 0 && left >= 4) return 4;
  if (offset % 2 === 0 && left >= 2) return 2;
  return 1;
}
