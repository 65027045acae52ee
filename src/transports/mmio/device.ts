/**
 * The device side of virtio-mmio (§4.2): a register file over a DeviceState. An emulator routes
 * its guest's loads and stores in the device's window here; in-process drivers call it directly.
 * The selector registers live here because they are this transport's; everything with virtio
 * meaning goes to the DeviceState.
 *
 * Every access comes from the driver: control registers take only aligned 32-bit accesses
 * (§4.2.2.2), other accesses to them read zero and write nothing, as do unknown offsets.
 */
import type { Logger } from 'pino';
import type { VirtioDevice } from '../../virtio/device.ts';
import { DeviceState } from '../../virtio/device-state.ts';
import type { QueueArea } from '../../virtio/device-state.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import { MMIO_MAGIC, MMIO_VERSION, MmioInterrupt, MmioReg } from './registers.ts';
import type { AccessWidth, MmioRegisterAccess } from './registers.ts';

export interface MmioDeviceOptions {
  /** §4.2.2 VendorID; 0 unless told. */
  readonly vendorId?: number;
  /**
   * The interrupt line: called with true each time the device raises an InterruptStatus bit and
   * with false when the driver's acknowledgement (or a reset) clears the last one.
   */
  readonly interrupt?: (asserted: boolean) => void;
  readonly log?: Logger;
}

/** Queue address registers: which area and which half each offset writes. */
const QUEUE_AREA_REGS: ReadonlyMap<number, readonly [QueueArea, boolean]> = new Map([
  [MmioReg.QUEUE_DESC_LOW, ['desc', false]],
  [MmioReg.QUEUE_DESC_HIGH, ['desc', true]],
  [MmioReg.QUEUE_DRIVER_LOW, ['driver', false]],
  [MmioReg.QUEUE_DRIVER_HIGH, ['driver', true]],
  [MmioReg.QUEUE_DEVICE_LOW, ['device', false]],
  [MmioReg.QUEUE_DEVICE_HIGH, ['device', true]],
]);

export class MmioDevice implements MmioRegisterAccess {
  readonly state: DeviceState;
  private readonly vendorId: number;
  private readonly line: (asserted: boolean) => void;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private queueSel = 0;
  private interruptStatus = 0;

  constructor(device: VirtioDevice, memory: GuestMemory, options: MmioDeviceOptions = {}) {
    this.vendorId = (options.vendorId ?? 0) >>> 0;
    this.line = options.interrupt ?? (() => {});
    this.state = new DeviceState(
      device,
      memory,
      {
        usedBuffer: () => this.raise(MmioInterrupt.USED_BUFFER),
        configChange: () => this.raise(MmioInterrupt.CONFIG_CHANGE),
      },
      options.log,
    );
    // On a bus, the device is visible to a driver from now on.
    device.prepare?.();
  }

  /** Whether the interrupt line is asserted (some InterruptStatus bit is set). */
  get interruptAsserted(): boolean {
    return this.interruptStatus !== 0;
  }

  read(offset: number, width: AccessWidth): number {
    if (offset >= MmioReg.CONFIG) return this.readConfig(offset - MmioReg.CONFIG, width);
    if (width !== 4 || offset % 4 !== 0) return 0;
    return this.read32(offset) >>> 0;
  }

  write(offset: number, width: AccessWidth, value: number): void {
    if (offset >= MmioReg.CONFIG) {
      this.writeConfig(offset - MmioReg.CONFIG, width, value);
      return;
    }
    if (width !== 4 || offset % 4 !== 0) return;
    this.write32(offset, value >>> 0);
  }

  private read32(offset: number): number {
    const s = this.state;
    switch (offset) {
      case MmioReg.MAGIC_VALUE:
        return MMIO_MAGIC;
      case MmioReg.VERSION:
        return MMIO_VERSION;
      case MmioReg.DEVICE_ID:
        return s.device.deviceId;
      case MmioReg.VENDOR_ID:
        return this.vendorId;
      case MmioReg.DEVICE_FEATURES:
        return s.deviceFeatureWord(this.deviceFeaturesSel);
      case MmioReg.QUEUE_SIZE_MAX:
        return s.queueMaxSize(this.queueSel);
      case MmioReg.QUEUE_READY:
        return s.queueReady(this.queueSel) ? 1 : 0;
      case MmioReg.INTERRUPT_STATUS:
        return this.interruptStatus;
      case MmioReg.STATUS:
        return s.status;
      // No shared memory regions: §4.2.2 gives length -1 and base ~0 for a region that does not exist.
      case MmioReg.SHM_LEN_LOW:
      case MmioReg.SHM_LEN_HIGH:
      case MmioReg.SHM_BASE_LOW:
      case MmioReg.SHM_BASE_HIGH:
        return 0xffff_ffff;
      case MmioReg.CONFIG_GENERATION:
        return s.configGeneration;
      default:
        // Write-only and unknown registers, and QueueReset: VIRTIO_F_RING_RESET is not offered.
        return 0;
    }
  }

  private write32(offset: number, value: number): void {
    const s = this.state;
    const area = QUEUE_AREA_REGS.get(offset);
    if (area !== undefined) {
      s.writeQueueAreaHalf(this.queueSel, area[0], area[1], value);
      return;
    }
    switch (offset) {
      case MmioReg.DEVICE_FEATURES_SEL:
        this.deviceFeaturesSel = value;
        break;
      case MmioReg.DRIVER_FEATURES:
        s.writeDriverFeatureWord(this.driverFeaturesSel, value);
        break;
      case MmioReg.DRIVER_FEATURES_SEL:
        this.driverFeaturesSel = value;
        break;
      case MmioReg.QUEUE_SEL:
        this.queueSel = value;
        break;
      case MmioReg.QUEUE_SIZE:
        s.writeQueueSize(this.queueSel, value);
        break;
      case MmioReg.QUEUE_READY:
        s.writeQueueReady(this.queueSel, value === 1);
        break;
      case MmioReg.QUEUE_NOTIFY:
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index (§4.2.2).
        s.notify(value);
        break;
      case MmioReg.INTERRUPT_ACK:
        this.acknowledge(value);
        break;
      case MmioReg.STATUS:
        if (value === 0) this.clearInterrupts();
        s.writeStatus(value);
        break;
      default:
        // Read-only and unknown registers, SHMSel (no regions), QueueReset (not offered).
        break;
    }
  }

  /** Config space is byte-addressed at any alignment; little-endian like every register (§4.2.2). */
  private readConfig(offset: number, width: AccessWidth): number {
    const bytes = this.state.readConfig(offset, width);
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + bytes[i];
    return v;
  }

  private writeConfig(offset: number, width: AccessWidth, value: number): void {
    const bytes = new Uint8Array(width);
    for (let i = 0; i < width; i++) bytes[i] = (value >>> (8 * i)) & 0xff;
    this.state.writeConfig(offset, bytes);
  }

  /** §4.2.2.1: a bit stays set from the event until the driver acknowledges it. */
  private raise(bit: number): void {
    this.interruptStatus |= bit;
    this.line(true);
  }

  private acknowledge(bits: number): void {
    if (this.interruptStatus === 0) return;
    this.interruptStatus &= ~bits;
    if (this.interruptStatus === 0) this.line(false);
  }

  /** §4.2.2.1: reset clears InterruptStatus. */
  private clearInterrupts(): void {
    this.acknowledge(0xffff_ffff);
  }
}
