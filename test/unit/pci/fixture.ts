/**
 * A virtio PCI function for unit tests: a configuration space with virtio capabilities, and a
 * GuestBus on which BAR 4 holds the common configuration, ISR, device configuration and
 * notification structures at QEMU's offsets. The registers map onto a DeviceState, so a real
 * paravirt device (rng, blk) answers behind them. Every BAR access is recorded with its width.
 */
import { pino } from 'pino';
import type { PciBar } from '../../../src/transports/pci/bars.ts';
import { CommonCfg, IsrStatus } from '../../../src/transports/pci/common-cfg.ts';
import { CONFIG_SPACE_SIZE, ConfigReg, bdf, type ConfigAccess, type ConfigWidth } from '../../../src/transports/pci/config.ts';
import { VirtioPciCap } from '../../../src/transports/pci/virtio-structures.ts';
import type { GuestBus, InterruptListener } from '../../../src/transports/qtest/guest-bus.ts';
import type { VirtioDevice } from '../../../src/virtio/device.ts';
import { DeviceState, type QueueArea } from '../../../src/virtio/device-state.ts';
import type { GuestMemory } from '../../../src/virtio/memory.ts';

export const TARGET = bdf(0, 4, 0);
export const BAR_ADDR = 0xe000_0000;
export const BAR_SIZE = 0x4000;
export const BAR4: PciBar = { index: 4, kind: 'memory', addr: BAR_ADDR, size: BAR_SIZE, wide: true };
export const Layout = { COMMON: 0x0, ISR: 0x1000, DEVICE: 0x2000, NOTIFY: 0x3000 } as const;

/** One vendor-specific capability as the builder lays it out. */
export interface CapSpec {
  readonly cfgType: number;
  readonly bar: number;
  readonly offset: number;
  readonly length: number;
  /** notify_off_multiplier for NOTIFY_CFG. */
  readonly multiplier?: number;
  /** Default: 20 for NOTIFY_CFG and PCI_CFG, 16 otherwise. */
  readonly capLen?: number;
}

/** QEMU's layout: every structure in BAR 4, notify_off_multiplier 4. */
export function qemuCaps(deviceCfgLength: number, multiplier = 4): CapSpec[] {
  return [
    { cfgType: VirtioPciCap.COMMON_CFG, bar: 4, offset: Layout.COMMON, length: 0x1000 },
    { cfgType: VirtioPciCap.ISR_CFG, bar: 4, offset: Layout.ISR, length: 0x1000 },
    ...(deviceCfgLength > 0 ? [{ cfgType: VirtioPciCap.DEVICE_CFG, bar: 4, offset: Layout.DEVICE, length: deviceCfgLength }] : []),
    { cfgType: VirtioPciCap.NOTIFY_CFG, bar: 4, offset: Layout.NOTIFY, length: 0x1000, multiplier },
    { cfgType: VirtioPciCap.PCI_CFG, bar: 0, offset: 0, length: 0 },
  ];
}

/**
 * A type-0 configuration space: virtio ids for `deviceId`, INTA, and `caps` chained from 0x40 on
 * (each capability rounded up to a dword), optionally with an MSI-X capability first.
 */
export function configSpace(deviceId: number, caps: readonly CapSpec[], options: { msixEnabled?: boolean } = {}): Uint8Array {
  const space = new Uint8Array(CONFIG_SPACE_SIZE);
  const view = new DataView(space.buffer);
  view.setUint16(ConfigReg.VENDOR_ID, 0x1af4, true);
  view.setUint16(ConfigReg.DEVICE_ID, 0x1040 + deviceId, true);
  view.setUint8(ConfigReg.REVISION_ID, 1);
  view.setUint16(ConfigReg.STATUS, 0x10, true);
  view.setUint8(ConfigReg.INTERRUPT_PIN, 1);
  let at = 0x40;
  let link = ConfigReg.CAPABILITIES_POINTER;
  const chain = (offset: number): void => {
    space[link] = offset;
    link = offset + 1;
  };
  if (options.msixEnabled !== undefined) {
    chain(at);
    space[at] = 0x11;
    view.setUint16(at + 2, (options.msixEnabled ? 0x8000 : 0) | 1, true);
    at += 12;
  }
  for (const cap of caps) {
    const extended = cap.cfgType === VirtioPciCap.NOTIFY_CFG || cap.cfgType === VirtioPciCap.PCI_CFG;
    const capLen = cap.capLen ?? (extended ? 20 : 16);
    chain(at);
    space[at] = 0x09;
    space[at + 2] = capLen;
    space[at + 3] = cap.cfgType;
    space[at + 4] = cap.bar;
    view.setUint32(at + 8, cap.offset, true);
    view.setUint32(at + 12, cap.length, true);
    if (cap.cfgType === VirtioPciCap.NOTIFY_CFG) view.setUint32(at + 16, cap.multiplier ?? 4, true);
    at += Math.max(20, Math.ceil(capLen / 4) * 4);
  }
  return space;
}

/** Configuration spaces in memory, as ConfigAccess. */
export class FakeConfig implements ConfigAccess {
  readonly spaces = new Map<number, Uint8Array>();

  async read(target: number, offset: number, size: ConfigWidth): Promise<number> {
    const space = this.spaces.get(target);
    if (space === undefined) return size === 4 ? 0xffff_ffff : (1 << (8 * size)) - 1;
    const view = new DataView(space.buffer);
    return size === 1 ? view.getUint8(offset) : size === 2 ? view.getUint16(offset, true) : view.getUint32(offset, true);
  }

  async write(target: number, offset: number, size: ConfigWidth, value: number): Promise<void> {
    const space = this.spaces.get(target);
    if (space === undefined) return;
    const view = new DataView(space.buffer);
    if (size === 1) view.setUint8(offset, value);
    else if (size === 2) view.setUint16(offset, value, true);
    else view.setUint32(offset, value, true);
  }
}

export interface Access {
  readonly op: 'read' | 'write';
  readonly structure: keyof typeof Layout;
  readonly offset: number;
  readonly width: number;
  readonly value: number;
}

const AREA_REGS: ReadonlyMap<number, readonly [QueueArea, boolean]> = new Map([
  [CommonCfg.QUEUE_DESC, ['desc', false]],
  [CommonCfg.QUEUE_DESC + 4, ['desc', true]],
  [CommonCfg.QUEUE_DRIVER, ['driver', false]],
  [CommonCfg.QUEUE_DRIVER + 4, ['driver', true]],
  [CommonCfg.QUEUE_DEVICE, ['device', false]],
  [CommonCfg.QUEUE_DEVICE + 4, ['device', true]],
]);

/** The function's BAR 4 registers over a DeviceState, and its INTx line, as a GuestBus. */
export class FakeVirtioPciBus implements GuestBus {
  readonly state: DeviceState;
  readonly accesses: Access[] = [];
  /** queue_notify_off per queue (default: the queue index). */
  notifyOff: (index: number) => number = (index) => index;
  /** A broken device whose line stays asserted whatever the driver reads. */
  stuckLine = false;
  /** Reads of device_status after a reset that still return the old value. */
  resetReads = 0;
  private pendingResetReads = 0;
  private statusBeforeReset = 0;
  private featureSel = 0;
  private driverFeatureSel = 0;
  private queueSel = 0;
  private isr = 0;
  private level = false;
  private readonly listeners = new Set<InterruptListener>();

  constructor(
    device: VirtioDevice,
    memory: GuestMemory,
    readonly line: number,
  ) {
    this.state = new DeviceState(
      device,
      memory,
      { usedBuffer: () => this.raise(IsrStatus.QUEUE), configChange: () => this.raise(IsrStatus.CONFIG) },
      pino({ level: 'silent' }),
    );
  }

  raise(bit: number): void {
    this.isr |= bit;
    this.setLevel(true);
  }

  private setLevel(level: boolean): void {
    if (this.level === level) return;
    this.level = level;
    for (const listener of [...this.listeners]) listener({ line: this.line, raised: level });
  }

  private locate(addr: number, width: number): { structure: keyof typeof Layout; offset: number } {
    const at = addr - BAR_ADDR;
    if (at < 0 || at + width > BAR_SIZE) throw new Error(`access outside BAR 4 at 0x${addr.toString(16)}`);
    const structure = (['NOTIFY', 'DEVICE', 'ISR', 'COMMON'] as const).find((s) => at >= Layout[s]);
    if (structure === undefined) throw new Error('unreachable');
    return { structure, offset: at - Layout[structure] };
  }

  private load(addr: number, width: number): number {
    const { structure, offset } = this.locate(addr, width);
    const value = this.registerRead(structure, offset, width);
    this.accesses.push({ op: 'read', structure, offset, width, value });
    return value;
  }

  private store(addr: number, width: number, value: number): void {
    const { structure, offset } = this.locate(addr, width);
    this.accesses.push({ op: 'write', structure, offset, width, value });
    this.registerWrite(structure, offset, width, value);
  }

  private registerRead(structure: keyof typeof Layout, offset: number, width: number): number {
    const s = this.state;
    switch (structure) {
      case 'ISR': {
        // §4.1.4.5: reading clears ISR status and deasserts the line.
        const value = this.isr;
        this.isr = 0;
        if (!this.stuckLine) this.setLevel(false);
        return value;
      }
      case 'DEVICE': {
        const bytes = s.readConfig(offset, width);
        return bytes.reduceRight((v, b) => v * 256 + b, 0);
      }
      case 'NOTIFY':
        return 0;
      case 'COMMON':
        switch (offset) {
          case CommonCfg.DEVICE_FEATURE_SELECT: return this.featureSel;
          case CommonCfg.DEVICE_FEATURE: return s.deviceFeatureWord(this.featureSel);
          case CommonCfg.DRIVER_FEATURE_SELECT: return this.driverFeatureSel;
          case CommonCfg.DRIVER_FEATURE: return s.driverFeatureWord(this.driverFeatureSel);
          case CommonCfg.MSIX_CONFIG: return 0xffff;
          case CommonCfg.NUM_QUEUES: return s.numQueues;
          case CommonCfg.DEVICE_STATUS:
            if (this.pendingResetReads > 0) {
              this.pendingResetReads--;
              return this.statusBeforeReset;
            }
            return s.status;
          case CommonCfg.CONFIG_GENERATION: return s.configGeneration & 0xff;
          case CommonCfg.QUEUE_SELECT: return this.queueSel;
          case CommonCfg.QUEUE_SIZE: return s.queueMaxSize(this.queueSel) === 0 ? 0 : s.queueSize(this.queueSel);
          case CommonCfg.QUEUE_MSIX_VECTOR: return 0xffff;
          case CommonCfg.QUEUE_ENABLE: return s.queueReady(this.queueSel) ? 1 : 0;
          case CommonCfg.QUEUE_NOTIFY_OFF: return this.notifyOff(this.queueSel);
          default: return 0;
        }
    }
  }

  private registerWrite(structure: keyof typeof Layout, offset: number, width: number, value: number): void {
    const s = this.state;
    if (structure === 'NOTIFY') {
      // Any notify address reaches the queue named by the data (the driver is checked by the test).
      s.notify(value);
      return;
    }
    if (structure === 'DEVICE') {
      s.writeConfig(offset, Uint8Array.from({ length: width }, (_, i) => (value >>> (8 * i)) & 0xff));
      return;
    }
    if (structure !== 'COMMON') return;
    const area = AREA_REGS.get(offset);
    if (area !== undefined) {
      s.writeQueueAreaHalf(this.queueSel, area[0], area[1], value);
      return;
    }
    switch (offset) {
      case CommonCfg.DEVICE_FEATURE_SELECT: this.featureSel = value; return;
      case CommonCfg.DRIVER_FEATURE_SELECT: this.driverFeatureSel = value; return;
      case CommonCfg.DRIVER_FEATURE: s.writeDriverFeatureWord(this.driverFeatureSel, value); return;
      case CommonCfg.DEVICE_STATUS:
        if (value === 0) {
          this.statusBeforeReset = s.status;
          this.pendingResetReads = this.resetReads;
          this.isr = 0;
          this.setLevel(false);
        }
        s.writeStatus(value);
        return;
      case CommonCfg.QUEUE_SELECT: this.queueSel = value; return;
      case CommonCfg.QUEUE_SIZE: s.writeQueueSize(this.queueSel, value); return;
      case CommonCfg.QUEUE_ENABLE: s.writeQueueReady(this.queueSel, value === 1); return;
    }
  }

  async readU8(addr: number): Promise<number> {
    return this.load(addr, 1);
  }
  async readU16(addr: number): Promise<number> {
    return this.load(addr, 2);
  }
  async readU32(addr: number): Promise<number> {
    return this.load(addr, 4);
  }
  async writeU8(addr: number, value: number): Promise<void> {
    this.store(addr, 1, value);
  }
  async writeU16(addr: number, value: number): Promise<void> {
    this.store(addr, 2, value);
  }
  async writeU32(addr: number, value: number): Promise<void> {
    this.store(addr, 4, value);
  }

  interruptLevel(line: number): boolean {
    return line === this.line && this.level;
  }

  onInterrupt(listener: InterruptListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private unexpected(what: string): never {
    throw new Error(`a virtio-pci transport does not use ${what}`);
  }
  read = async (): Promise<Uint8Array> => this.unexpected('bulk memory reads');
  write = async (): Promise<void> => this.unexpected('bulk memory writes');
  fill = async (): Promise<void> => this.unexpected('memory fills');
  readU64 = async (): Promise<bigint> => this.unexpected('64-bit loads');
  writeU64 = async (): Promise<void> => this.unexpected('64-bit stores');
  inU8 = async (): Promise<number> => this.unexpected('port I/O');
  inU16 = async (): Promise<number> => this.unexpected('port I/O');
  inU32 = async (): Promise<number> => this.unexpected('port I/O');
  outU8 = async (): Promise<void> => this.unexpected('port I/O');
  outU16 = async (): Promise<void> => this.unexpected('port I/O');
  outU32 = async (): Promise<void> => this.unexpected('port I/O');
}
