/**
 * The driver side of virtio over PCI (§4.1), modern interface only, over a GuestBus: what a
 * guest kernel's virtio-pci driver does, done from outside the machine.
 *
 * Registers live in the structures the device's vendor capabilities point at (§4.1.4), reached
 * as MMIO or port I/O through the bus. Rings and buffers do not go through the bus at all: they
 * are in guest RAM, which the caller maps into this process (`memory`). When that mapping is a
 * MAP_SHARED mapping of the same file QEMU maps as guest RAM, both processes address the same
 * physical pages, which x86 keeps coherent and in store order; and every ring update this
 * process makes happens before the notify write that tells the device about it leaves through a
 * pipe to QEMU. So the device sees the rings exactly as written, and what it writes back is
 * complete when its interrupt (sent later over the same bus) arrives.
 *
 * Interrupts come as INTx (§4.1.5.3, §4.1.5.4): the function's pin reaches an interrupt line the
 * bus reports changes of; on a rising line the transport reads ISR status, which tells queue
 * interrupts from configuration changes and deasserts the line. MSI-X is left disabled: an MSI
 * is a memory write the bus cannot announce, so it would have to be polled for.
 */
import { pino } from 'pino';
import type { Logger } from 'pino';
import type { DmaAllocator, DriverTransport, InterruptHandlers } from '../../virtio/driver.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import type { QueueAddresses } from '../../virtio/queue.ts';
import type { GuestBus, InterruptEvent } from '../qtest/guest-bus.ts';
import { BarRegion, type RegisterWidth } from './bar-region.ts';
import type { PciBar } from './bars.ts';
import { CapabilityId, listCapabilities } from './capabilities.ts';
import { CommonCfg, IsrStatus } from './common-cfg.ts';
import { Command, ConfigReg, formatBdf, readConfigSpace, type ConfigAccess } from './config.ts';
import { findVirtioStructures } from './virtio-structures.ts';

export interface VirtioPciOptions {
  /** Guest RAM as this process sees it: where the driver builds rings and buffers. */
  readonly memory: GuestMemory;
  /** Free guest RAM inside `memory` for rings and request buffers. */
  readonly dma: DmaAllocator;
  /**
   * The interrupt line (as the bus numbers them) that INTx `pin` (1 = INTA) of a function in
   * `slot` reaches: q35IntxLine on a PC. The bus must already report that line's changes
   * (under qtest: irq_intercept_in on the IOAPIC).
   */
  readonly intxLine: (slot: number, pin: number) => number;
  readonly log?: Logger;
}

/** §4.1.2.1: every virtio PCI function has this vendor id. */
export const VIRTIO_PCI_VENDOR = 0x1af4;
/** §4.1.2.1: modern device ids are 0x1040 + the virtio device id, up to 0x107f. */
const MODERN_DEVICE_BASE = 0x1040;
const MODERN_DEVICE_LAST = 0x107f;
/** §4.1.2.1: transitional devices use 0x1000..0x103f and carry the virtio id in the subsystem id. */
const TRANSITIONAL_FIRST = 0x1000;
const TRANSITIONAL_LAST = 0x103f;

/** MSI-X Message Control (PCI Local Bus 3.0 §6.8.2.3) sits after id and next; bit 15 enables MSI-X. */
const MSIX_MESSAGE_CONTROL = 2;
const MSIX_ENABLE = 0x8000;

/**
 * §4.1.4.3.2: after writing 0 to device_status the driver waits for it to read 0. A qtest read is
 * a round trip to a device that resets synchronously, so a bound on reads, not on time, suffices.
 */
const RESET_POLLS = 1000;
/** Rounds of one interrupt service while the line stays asserted (see service()). */
const MAX_INTERRUPT_ROUNDS = 64;
const U32 = 0x1_0000_0000;

/** The virtio device id of a virtio PCI function (§4.1.2.1), or undefined when it is not one. */
function virtioDeviceId(space: Uint8Array): number | undefined {
  const view = new DataView(space.buffer, space.byteOffset, space.length);
  if (view.getUint16(ConfigReg.VENDOR_ID, true) !== VIRTIO_PCI_VENDOR) return undefined;
  const pciId = view.getUint16(ConfigReg.DEVICE_ID, true);
  if (pciId >= MODERN_DEVICE_BASE && pciId <= MODERN_DEVICE_LAST) return pciId - MODERN_DEVICE_BASE;
  if (pciId >= TRANSITIONAL_FIRST && pciId <= TRANSITIONAL_LAST) return view.getUint16(ConfigReg.SUBSYSTEM_ID, true);
  return undefined;
}

/** The widest access (4, 2 or 1 bytes) aligned at `offset` that fits in `left` bytes (§4.1.3.1). */
function accessWidth(offset: number, left: number): RegisterWidth {
  if (offset % 4 === 0 && left >= 4) return 4;
  if (offset % 2 === 0 && left >= 2) return 2;
  return 1;
}

/** The device's structures (§4.1.4), as register windows. */
interface Registers {
  readonly common: BarRegion;
  readonly notify: BarRegion;
  readonly notifyOffMultiplier: number;
  readonly isr: BarRegion;
  readonly device: BarRegion | undefined;
}

export class VirtioPciTransport implements DriverTransport {
  readonly memory: GuestMemory;
  readonly dma: DmaAllocator;
  private readonly common: BarRegion;
  private readonly log: Logger;
  private handlers: InterruptHandlers | undefined;
  /** Notify offset (within the notification structure) of each enabled queue. */
  private readonly notifyAt = new Map<number, number>();
  private servicing = false;
  /** The line rose again while an interrupt was being serviced. */
  private again = false;
  private readonly unsubscribe: () => void;
  private closed = false;

  private constructor(
    private readonly bus: GuestBus,
    /** The function, as bus<<8 | device<<3 | function. */
    readonly target: number,
    private readonly id: number,
    private readonly regs: Registers,
    /** The interrupt line INTx reaches. */
    readonly line: number,
    options: VirtioPciOptions,
  ) {
    this.memory = options.memory;
    this.dma = options.dma;
    this.common = regs.common;
    this.log = (options.log ?? pino({ name: 'paravirt' })).child({ transport: `virtio-pci ${formatBdf(target)}` });
    this.unsubscribe = bus.onInterrupt((event) => this.onInterrupt(event));
  }

  /**
   * Take over the virtio function `target`, whose BARs were assigned as `bars`: find and check its
   * structures, enable memory decoding and bus mastering, and leave MSI-X off so that the device
   * interrupts through INTx.
   */
  static async open(bus: GuestBus, config: ConfigAccess, target: number, bars: readonly PciBar[], options: VirtioPciOptions): Promise<VirtioPciTransport> {
    const name = formatBdf(target);
    const space = await readConfigSpace(config, target);
    const id = virtioDeviceId(space);
    if (id === undefined) {
      const view = new DataView(space.buffer);
      const ids = `${view.getUint16(ConfigReg.VENDOR_ID, true).toString(16)}:${view.getUint16(ConfigReg.DEVICE_ID, true).toString(16)}`;
      throw new Error(`PCI function ${name} (${ids}) is not a virtio device (§4.1.2)`);
    }
    const structures = findVirtioStructures(space, bars);
    const pin = space[ConfigReg.INTERRUPT_PIN];
    if (pin === 0) throw new Error(`virtio function ${name} has no INTx pin, through which this transport takes interrupts`);
    const line = options.intxLine((target >> 3) & 0x1f, pin);

    const command = new DataView(space.buffer).getUint16(ConfigReg.COMMAND, true);
    await config.write(target, ConfigReg.COMMAND, 2, (command | Command.MEMORY | Command.IO | Command.BUS_MASTER) & ~Command.INTX_DISABLE);
    const msix = listCapabilities(space).find((c) => c.id === CapabilityId.MSIX);
    if (msix !== undefined) {
      const control = await config.read(target, msix.offset + MSIX_MESSAGE_CONTROL, 2);
      if (control & MSIX_ENABLE) await config.write(target, msix.offset + MSIX_MESSAGE_CONTROL, 2, control & ~MSIX_ENABLE);
    }

    const regs: Registers = {
      common: new BarRegion(bus, structures.common),
      notify: new BarRegion(bus, structures.notify),
      notifyOffMultiplier: structures.notifyOffMultiplier,
      isr: new BarRegion(bus, structures.isr),
      device: structures.device && new BarRegion(bus, structures.device),
    };
    return new VirtioPciTransport(bus, target, id, regs, line, options);
  }

  async deviceId(): Promise<number> {
    return this.id;
  }

  async deviceFeatures(): Promise<bigint> {
    // One burst: the select writes and reads are performed in issue order.
    const [, lo, , hi] = await Promise.all([
      this.common.write(CommonCfg.DEVICE_FEATURE_SELECT, 4, 0),
      this.common.read(CommonCfg.DEVICE_FEATURE, 4),
      this.common.write(CommonCfg.DEVICE_FEATURE_SELECT, 4, 1),
      this.common.read(CommonCfg.DEVICE_FEATURE, 4),
    ]);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  async setDriverFeatures(features: bigint): Promise<void> {
    if (features < 0n || features >> 64n !== 0n) throw new RangeError(`driver features 0x${features.toString(16)} do not fit in 64 bits`);
    await Promise.all([
      this.common.write(CommonCfg.DRIVER_FEATURE_SELECT, 4, 0),
      this.common.write(CommonCfg.DRIVER_FEATURE, 4, Number(features & 0xffff_ffffn)),
      this.common.write(CommonCfg.DRIVER_FEATURE_SELECT, 4, 1),
      this.common.write(CommonCfg.DRIVER_FEATURE, 4, Number(features >> 32n)),
    ]);
  }

  getStatus(): Promise<number> {
    return this.common.read(CommonCfg.DEVICE_STATUS, 1);
  }

  async setStatus(status: number): Promise<void> {
    await this.common.write(CommonCfg.DEVICE_STATUS, 1, status);
  }

  async reset(): Promise<void> {
    this.notifyAt.clear();
    await this.common.write(CommonCfg.DEVICE_STATUS, 1, 0);
    let status = 0;
    for (let poll = 0; poll < RESET_POLLS; poll++) {
      status = await this.getStatus();
      if (status === 0) return;
    }
    throw new Error(`virtio-pci device did not reset: device_status still reads 0x${status.toString(16)} after ${RESET_POLLS} reads`);
  }

  configGeneration(): Promise<number> {
    return this.common.read(CommonCfg.CONFIG_GENERATION, 1);
  }

  /** Each field is read with one access of its width (§4.1.3.1), as wide as alignment and length allow. */
  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    const device = this.deviceRegion(offset, length);
    const out = new Uint8Array(length);
    const reads: Promise<void>[] = [];
    for (let at = 0; at < length; ) {
      const width = accessWidth(offset + at, length - at);
      const into = at;
      reads.push(
        device.read(offset + at, width).then((v) => {
          for (let i = 0; i < width; i++) out[into + i] = (v >>> (8 * i)) & 0xff;
        }),
      );
      at += width;
    }
    await Promise.all(reads);
    return out;
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    const device = this.deviceRegion(offset, data.length);
    const writes: Promise<void>[] = [];
    for (let at = 0; at < data.length; ) {
      const width = accessWidth(offset + at, data.length - at);
      let v = 0;
      for (let i = width - 1; i >= 0; i--) v = v * 256 + data[at + i];
      writes.push(device.write(offset + at, width, v));
      at += width;
    }
    await Promise.all(writes);
  }

  numQueues(): Promise<number> {
    return this.common.read(CommonCfg.NUM_QUEUES, 2);
  }

  async queueMaxSize(index: number): Promise<number> {
    checkQueueIndex(index);
    const [, size] = await Promise.all([this.common.write(CommonCfg.QUEUE_SELECT, 2, index), this.common.read(CommonCfg.QUEUE_SIZE, 2)]);
    return size;
  }

  /** §4.1.5.1.3: select, check, size, place, then enable and check that the device took it. */
  async enableQueue(index: number, size: number, addrs: QueueAddresses): Promise<void> {
    checkQueueIndex(index);
    const [, enabled, max, notifyOff] = await Promise.all([
      this.common.write(CommonCfg.QUEUE_SELECT, 2, index),
      this.common.read(CommonCfg.QUEUE_ENABLE, 2),
      this.common.read(CommonCfg.QUEUE_SIZE, 2),
      this.common.read(CommonCfg.QUEUE_NOTIFY_OFF, 2),
    ]);
    if (enabled !== 0) throw new Error(`virtio-pci queue ${index} is already enabled`);
    if (max === 0) throw new Error(`virtio-pci queue ${index} does not exist`);
    if (!Number.isInteger(size) || size < 1 || size > max) throw new RangeError(`queue ${index} size ${size} is outside 1..${max}, the device's maximum`);
    // §4.1.4.4: the device promises cap.length >= queue_notify_off * notify_off_multiplier + 2; check it.
    const notifyAt = notifyOff * this.regs.notifyOffMultiplier;
    if (notifyAt + 2 > this.regs.notify.length) {
      throw new Error(`virtio-pci queue ${index}: queue_notify_off ${notifyOff} × ${this.regs.notifyOffMultiplier} lies outside the ${this.regs.notify.length}-byte notification structure`);
    }
    const placed = Promise.all([
      this.common.write(CommonCfg.QUEUE_SELECT, 2, index),
      this.common.write(CommonCfg.QUEUE_SIZE, 2, size),
      ...this.writeAddress(CommonCfg.QUEUE_DESC, addrs.desc),
      ...this.writeAddress(CommonCfg.QUEUE_DRIVER, addrs.driver),
      ...this.writeAddress(CommonCfg.QUEUE_DEVICE, addrs.device),
      this.common.write(CommonCfg.QUEUE_ENABLE, 2, 1),
    ]);
    const [, readBack] = await Promise.all([placed, this.common.read(CommonCfg.QUEUE_ENABLE, 2)]);
    if (readBack !== 1) throw new Error(`virtio-pci device refused queue ${index} of size ${size}`);
    this.notifyAt.set(index, notifyAt);
  }

  /**
   * §4.1.5.2: write the queue index at the queue's notify address. Not awaited: the bus performs
   * calls in issue order, so the write lands after every register write issued before it and
   * before any issued later; a failure (the machine is gone) is logged.
   */
  notify(index: number): void {
    const at = this.notifyAt.get(index);
    if (at === undefined) {
      this.log.warn(`notify of queue ${index}, which is not enabled, dropped`);
      return;
    }
    this.regs.notify.write(at, 2, index).catch((err: unknown) => this.log.error({ err }, `notify of queue ${index} failed`));
  }

  setInterruptHandlers(handlers: InterruptHandlers): void {
    this.handlers = handlers;
    // An interrupt raised before there was anyone to tell is still pending on the line.
    if (this.bus.interruptLevel(this.line)) this.service();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.handlers = undefined;
    this.notifyAt.clear();
    this.unsubscribe();
  }

  private onInterrupt(event: InterruptEvent): void {
    if (event.line === this.line && event.raised) this.service();
  }

  private service(): void {
    if (this.servicing) {
      this.again = true;
      return;
    }
    this.servicing = true;
    this.serviceRounds()
      .catch((err: unknown) => {
        if (!this.closed) this.log.error({ err }, 'interrupt service failed');
      })
      .finally(() => {
        this.servicing = false;
      });
  }

  /**
   * Read ISR status (which deasserts the line, §4.1.4.5) and dispatch what it says. INTx is level
   * triggered and may be shared: while the line is still asserted after a read, whether by this
   * device again or by another on the same line, look again, as an IOAPIC re-delivers a level
   * interrupt after EOI. The bus reports level changes before it answers the read, so the level
   * seen after the read is current.
   */
  private async serviceRounds(): Promise<void> {
    for (let round = 0; round < MAX_INTERRUPT_ROUNDS && !this.closed; round++) {
      this.again = false;
      const isr = await this.regs.isr.read(0, 1);
      const h = this.handlers;
      if (h !== undefined) {
        if (isr & IsrStatus.CONFIG) h.config();
        if (isr & IsrStatus.QUEUE) for (const q of this.notifyAt.keys()) h.queue(q);
      }
      if (!this.again && !this.bus.interruptLevel(this.line)) return;
    }
    if (!this.closed) this.log.warn(`interrupt line ${this.line} stayed asserted over ${MAX_INTERRUPT_ROUNDS} ISR reads; waiting for it to rise again`);
  }

  /** The device configuration structure, checked to hold [offset, offset+length). */
  private deviceRegion(offset: number, length: number): BarRegion {
    const device = this.regs.device;
    if (device === undefined) throw new Error('the virtio-pci device has no device configuration structure');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > device.length) {
      throw new RangeError(`device configuration access of ${length} bytes at ${offset} is outside its ${device.length} bytes`);
    }
    return device;
  }

  /** §4.1.3.1: a 64-bit field may be written as two 32-bit halves, low first. */
  private writeAddress(field: number, addr: number): Promise<void>[] {
    return [this.common.write(field, 4, addr % U32), this.common.write(field + 4, 4, Math.floor(addr / U32))];
  }
}

function checkQueueIndex(index: number): void {
  if (!Number.isInteger(index) || index < 0 || index > 0xffff) throw new RangeError(`queue index ${index} is outside 0..65535`);
}
