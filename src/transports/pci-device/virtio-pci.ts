/**
 * The device side of virtio over PCI (VIRTIO 1.2 §4.1), modern only: a PCI function whose
 * vendor-specific capabilities (§4.1.4) place the common configuration, notification, ISR and
 * device configuration structures in BAR 0, with MSI-X (table and PBA in BAR 2) for the
 * configuration vector and one vector per queue. The register layout is the one the driver side
 * reads (pci/common-cfg.ts, pci/virtio-structures.ts); everything with virtio meaning goes to the
 * DeviceState shared by every transport, as mmio/device.ts does for §4.2.
 *
 * BAR 0, one page per structure so a client may map the notification page on its own:
 *   0x0000 common configuration   0x1000 ISR status   0x2000 device configuration   0x3000 notifications
 */
import type { Logger } from 'pino';
import { DeviceState } from '../../virtio/device-state.ts';
import type { QueueArea } from '../../virtio/device-state.ts';
import type { ServingOptions, VirtioDevice } from '../../virtio/device.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import { CapabilityId } from '../pci/capabilities.ts';
import { COMMON_CFG_SIZE, CommonCfg, IsrStatus } from '../pci/common-cfg.ts';
import { VIRTIO_PCI_CAP_SIZE, VIRTIO_PCI_EXTENDED_CAP_SIZE, VirtioPciCap, VirtioPciCapField } from '../pci/virtio-structures.ts';
import { PciFunction, type BarHandler, type CapabilitySpec } from './function.ts';
import { MsixCap, MsixLayout, MsixTable, NO_VECTOR, msixEnabled } from './msix.ts';

/** §4.1.2.1: PCI vendor 0x1af4, device 0x1040 + virtio device id; revision 1 for modern-only. */
const VIRTIO_VENDOR_ID = 0x1af4;
const MODERN_DEVICE_ID_BASE = 0x1040;
const MODERN_REVISION = 1;
/** PCI class "other" (0xff0000): virtio device types have no one class, and Linux does not look. */
const CLASS_OTHER = 0xff_0000;

const STRUCTURE_BAR = 0;
const MSIX_BAR = 2;
const PAGE = 0x1000;
export const VirtioPciLayout = {
  COMMON: 0,
  ISR: PAGE,
  DEVICE: 2 * PAGE,
  NOTIFY: 3 * PAGE,
  BAR_SIZE: 4 * PAGE,
  /** Bytes between consecutive queues' notification addresses (§4.1.4.4). */
  NOTIFY_MULTIPLIER: 4,
} as const;

/** Where interrupts go: the client that carries them (vfio-user eventfds). */
export interface PciInterruptSink {
  /** Signal MSI-X vector `vector`; the client masks and delivers. */
  msix(vector: number): void;
  /** The function's INTx line changed level. */
  intx(asserted: boolean): void;
}

/** The 64-bit queue area registers: area and whether the offset is the high dword. */
const QUEUE_AREAS: ReadonlyMap<number, readonly [QueueArea, boolean]> = new Map([
  [CommonCfg.QUEUE_DESC, ['desc', false]],
  [CommonCfg.QUEUE_DESC + 4, ['desc', true]],
  [CommonCfg.QUEUE_DRIVER, ['driver', false]],
  [CommonCfg.QUEUE_DRIVER + 4, ['driver', true]],
  [CommonCfg.QUEUE_DEVICE, ['device', false]],
  [CommonCfg.QUEUE_DEVICE + 4, ['device', true]],
]);

/** A virtio structure capability (struct virtio_pci_cap, or the notify capability with its multiplier). */
function structureCap(cfgType: number, offset: number, length: number, multiplier?: number): CapabilitySpec {
  const size = multiplier === undefined ? VIRTIO_PCI_CAP_SIZE : VIRTIO_PCI_EXTENDED_CAP_SIZE;
  // The body starts after the id and next bytes, so every field offset is 2 less.
  const body = new Uint8Array(size - 2);
  const v = new DataView(body.buffer);
  v.setUint8(VirtioPciCapField.LEN - 2, size);
  v.setUint8(VirtioPciCapField.CFG_TYPE - 2, cfgType);
  v.setUint8(VirtioPciCapField.BAR - 2, STRUCTURE_BAR);
  v.setUint32(VirtioPciCapField.OFFSET - 2, offset, true);
  v.setUint32(VirtioPciCapField.LENGTH - 2, length, true);
  if (multiplier !== undefined) v.setUint32(VirtioPciCapField.NOTIFY_OFF_MULTIPLIER - 2, multiplier, true);
  return { id: CapabilityId.VENDOR_SPECIFIC, body };
}

/** Offset of pci_cfg_data in struct virtio_pci_cfg_cap. */
const PCI_CFG_DATA = VIRTIO_PCI_CAP_SIZE;

/** struct virtio_pci_cfg_cap (§4.1.4.9): bar, offset, length and pci_cfg_data are the driver's to write. */
function pciCfgCap(): CapabilitySpec {
  const cap = structureCap(VirtioPciCap.PCI_CFG, 0, 0, 0);
  const writable = new Uint8Array(cap.body.length);
  writable[VirtioPciCapField.BAR - 2] = 0xff;
  writable.fill(0xff, VirtioPciCapField.OFFSET - 2, VirtioPciCapField.LENGTH + 4 - 2);
  writable.fill(0xff, PCI_CFG_DATA - 2, PCI_CFG_DATA + 4 - 2);
  return { ...cap, writable };
}

function readLe(bytes: Uint8Array): number {
  let v = 0;
  for (let i = bytes.length - 1; i >= 0; i--) v = v * 256 + bytes[i];
  return v;
}

export class VirtioPciFunction {
  readonly state: DeviceState;
  readonly pci: PciFunction;
  private readonly msix: MsixLayout;
  private readonly msixTable: MsixTable;
  private readonly msixCapOffset: number;
  /** Offset of the PCI configuration access capability (§4.1.4.9). */
  private readonly pciCfgOffset: number;
  private sink: PciInterruptSink | undefined;
  private deviceFeatureSel = 0;
  private driverFeatureSel = 0;
  private queueSel = 0;
  private configVector = NO_VECTOR;
  private queueVectors: number[];
  private isr = 0;

  constructor(device: VirtioDevice, log?: Logger, serving: ServingOptions = {}) {
    this.state = new DeviceState(
      device,
      undefined,
      { usedBuffer: (q) => this.interrupt(this.queueVectors[q] ?? NO_VECTOR, IsrStatus.QUEUE), configChange: () => this.interrupt(this.configVector, IsrStatus.CONFIG) },
      log,
      serving,
    );
    this.queueVectors = new Array<number>(device.numQueues).fill(NO_VECTOR);
    // One vector for configuration changes and one per queue, as Linux asks for first.
    this.msix = new MsixLayout(device.numQueues + 1, MSIX_BAR);
    this.msixTable = new MsixTable(this.msix);
    const configSize = device.config.length;
    const caps = [
      structureCap(VirtioPciCap.COMMON_CFG, VirtioPciLayout.COMMON, COMMON_CFG_SIZE),
      structureCap(VirtioPciCap.NOTIFY_CFG, VirtioPciLayout.NOTIFY, Math.max(1, device.numQueues) * VirtioPciLayout.NOTIFY_MULTIPLIER, VirtioPciLayout.NOTIFY_MULTIPLIER),
      structureCap(VirtioPciCap.ISR_CFG, VirtioPciLayout.ISR, 1),
      ...(configSize > 0 ? [structureCap(VirtioPciCap.DEVICE_CFG, VirtioPciLayout.DEVICE, Math.min(configSize, PAGE))] : []),
      pciCfgCap(),
      this.msix.capability(),
    ];
    const structures: BarHandler = {
      size: VirtioPciLayout.BAR_SIZE,
      read: (offset, data) => this.readStructures(offset, data),
      write: (offset, data) => this.writeStructures(offset, data),
    };
    this.pci = new PciFunction({
      identity: {
        vendorId: VIRTIO_VENDOR_ID,
        deviceId: MODERN_DEVICE_ID_BASE + device.deviceId,
        subsystemVendorId: VIRTIO_VENDOR_ID,
        subsystemId: MODERN_DEVICE_ID_BASE + device.deviceId,
        revision: MODERN_REVISION,
        classCode: CLASS_OTHER,
      },
      bars: [structures, undefined, this.msixTable],
      capabilities: caps,
      interruptPin: 1,
      configWritten: (offset, length) => {
        this.pciCfgAccess(offset, length, true);
        this.intxChanged();
      },
      configRead: (offset, length) => this.pciCfgAccess(offset, length, false),
    });
    this.msixCapOffset = this.pci.capabilityOffsets[caps.length - 1];
    this.pciCfgOffset = this.pci.capabilityOffsets[caps.length - 2];
  }

  /**
   * §4.1.4.9: an access to pci_cfg_data reaches `length` bytes at `offset` of BAR `bar`, as the
   * driver set them in the capability. A BAR other than 0, a length other than 1, 2 or 4, or an
   * offset not aligned to it or outside the BAR reaches nothing (reads show zeros).
   */
  private pciCfgAccess(offset: number, length: number, write: boolean): void {
    const data = this.pciCfgOffset + PCI_CFG_DATA;
    if (offset >= data + 4 || offset + length <= data) return;
    const v = this.pci.configView();
    const at = this.pciCfgOffset;
    const bar = v.getUint8(at + VirtioPciCapField.BAR);
    const barOffset = v.getUint32(at + VirtioPciCapField.OFFSET, true);
    const width = v.getUint32(at + VirtioPciCapField.LENGTH, true);
    const bytes = new Uint8Array(v.buffer, v.byteOffset + data, 4);
    const usable = bar === STRUCTURE_BAR && (width === 1 || width === 2 || width === 4) && barOffset % width === 0 && barOffset + width <= VirtioPciLayout.BAR_SIZE;
    if (write) {
      if (usable) this.writeStructures(barOffset, bytes.slice(0, width));
      return;
    }
    bytes.fill(0);
    if (usable) this.readStructures(barOffset, bytes.subarray(0, width));
  }

  /** MSI-X vectors the function has (configuration + one per queue). */
  get msixVectors(): number {
    return this.msix.vectors;
  }

  /** A client connected (a sink) or left (undefined). */
  attachInterrupts(sink: PciInterruptSink | undefined): void {
    this.sink = sink;
    if (sink !== undefined) this.state.device.prepare?.();
  }

  useMemory(memory: GuestMemory | undefined): void {
    this.state.useMemory(memory);
  }

  /** Function-level reset: the virtio device (§2.4), its vectors and ISR, and configuration space. */
  reset(): void {
    this.state.reset();
    this.resetTransport();
    this.pci.reset();
    this.msixTable.reset();
    this.intxChanged();
  }

  private get msixOn(): boolean {
    return msixEnabled(this.pci.configView().getUint16(this.msixCapOffset + MsixCap.CONTROL, true));
  }

  /**
   * §4.1.5.3 / §4.1.5.4: with MSI-X enabled the event goes to its vector (none for NO_VECTOR);
   * without it, the ISR bit is set and INTx asserted until the driver reads the ISR.
   */
  private interrupt(vector: number, isrBit: number): void {
    if (this.msixOn) {
      if (vector !== NO_VECTOR) this.sink?.msix(vector);
      return;
    }
    this.isr |= isrBit;
    this.pci.setIntx(true);
    this.intxChanged();
  }

  private intxChanged(): void {
    this.sink?.intx(this.pci.intxAsserted);
  }

  private resetTransport(): void {
    this.deviceFeatureSel = 0;
    this.driverFeatureSel = 0;
    this.queueSel = 0;
    this.configVector = NO_VECTOR;
    this.queueVectors.fill(NO_VECTOR);
    this.isr = 0;
    this.pci.setIntx(false);
  }

  // --- BAR 0 ---

  private readStructures(offset: number, data: Uint8Array): void {
    data.fill(0);
    const page = offset - (offset % PAGE);
    const at = offset - page;
    if (at + data.length > PAGE) return; // an access straddling two structures reads nothing
    switch (page) {
      case VirtioPciLayout.COMMON:
        if (at + data.length <= COMMON_CFG_SIZE) data.set(this.renderCommon().subarray(at, at + data.length));
        break;
      case VirtioPciLayout.ISR:
        if (at === 0) data[0] = this.readIsr();
        break;
      case VirtioPciLayout.DEVICE:
        data.set(this.state.readConfig(at, data.length));
        break;
      default:
        // Notification addresses read as zero (§4.1.4.4 defines only writes).
        break;
    }
  }

  private writeStructures(offset: number, data: Uint8Array): void {
    const page = offset - (offset % PAGE);
    const at = offset - page;
    if (at + data.length > PAGE) return;
    switch (page) {
      case VirtioPciLayout.COMMON:
        this.writeCommon(at, data);
        break;
      case VirtioPciLayout.DEVICE:
        this.state.writeConfig(at, data);
        break;
      case VirtioPciLayout.NOTIFY:
        this.doorbell(at);
        break;
      default:
        // The ISR is read-only.
        break;
    }
  }

  /** A write at notification offset `at`: queue_notify_off is the queue index (§4.1.4.4). */
  doorbell(at: number): void {
    if (at % VirtioPciLayout.NOTIFY_MULTIPLIER === 0) this.state.notify(at / VirtioPciLayout.NOTIFY_MULTIPLIER);
  }

  /** §4.1.4.5: reading the ISR returns and clears it, and deasserts INTx. */
  private readIsr(): number {
    const value = this.isr;
    this.isr = 0;
    if (value !== 0) {
      this.pci.setIntx(false);
      this.intxChanged();
    }
    return value;
  }

  /** struct virtio_pci_common_cfg as the driver would read it now. */
  private renderCommon(): Uint8Array {
    const s = this.state;
    const q = this.queueSel;
    const out = new Uint8Array(COMMON_CFG_SIZE);
    const v = new DataView(out.buffer);
    v.setUint32(CommonCfg.DEVICE_FEATURE_SELECT, this.deviceFeatureSel, true);
    v.setUint32(CommonCfg.DEVICE_FEATURE, s.deviceFeatureWord(this.deviceFeatureSel), true);
    v.setUint32(CommonCfg.DRIVER_FEATURE_SELECT, this.driverFeatureSel, true);
    v.setUint32(CommonCfg.DRIVER_FEATURE, s.driverFeatureWord(this.driverFeatureSel), true);
    v.setUint16(CommonCfg.MSIX_CONFIG, this.configVector, true);
    v.setUint16(CommonCfg.NUM_QUEUES, s.numQueues, true);
    v.setUint8(CommonCfg.DEVICE_STATUS, s.status);
    v.setUint8(CommonCfg.CONFIG_GENERATION, s.configGeneration & 0xff);
    v.setUint16(CommonCfg.QUEUE_SELECT, q, true);
    const exists = q < s.numQueues;
    v.setUint16(CommonCfg.QUEUE_SIZE, exists ? s.queueSize(q) : 0, true);
    v.setUint16(CommonCfg.QUEUE_MSIX_VECTOR, exists ? this.queueVectors[q] : NO_VECTOR, true);
    v.setUint16(CommonCfg.QUEUE_ENABLE, s.queueReady(q) ? 1 : 0, true);
    v.setUint16(CommonCfg.QUEUE_NOTIFY_OFF, exists ? q : 0, true);
    for (const [reg, area] of [[CommonCfg.QUEUE_DESC, 'desc'], [CommonCfg.QUEUE_DRIVER, 'driver'], [CommonCfg.QUEUE_DEVICE, 'device']] as const) {
      v.setBigUint64(reg, BigInt(s.queueArea(q, area)), true);
    }
    return out;
  }

  /** A vector the function has, or NO_VECTOR: §4.1.5.1.2 has the device answer NO_VECTOR when it cannot map one. */
  private vector(value: number): number {
    return value < this.msix.vectors ? value : NO_VECTOR;
  }

  /**
   * The driver writes a common configuration field. Each field takes a write of its own width at
   * its own offset (the 64-bit queue addresses also as two dwords, as drivers write them); other
   * accesses are ignored.
   */
  private writeCommon(at: number, data: Uint8Array): void {
    const s = this.state;
    const value = readLe(data);
    const width = data.length;
    const area = QUEUE_AREAS.get(at);
    if (area !== undefined && width === 4) {
      s.writeQueueAreaHalf(this.queueSel, area[0], area[1], value);
      return;
    }
    if (area !== undefined && width === 8 && !area[1]) {
      s.writeQueueAreaHalf(this.queueSel, area[0], false, readLe(data.subarray(0, 4)));
      s.writeQueueAreaHalf(this.queueSel, area[0], true, readLe(data.subarray(4)));
      return;
    }
    const field = (reg: number, w: number): boolean => at === reg && width === w;
    if (field(CommonCfg.DEVICE_FEATURE_SELECT, 4)) this.deviceFeatureSel = value;
    else if (field(CommonCfg.DRIVER_FEATURE_SELECT, 4)) this.driverFeatureSel = value;
    else if (field(CommonCfg.DRIVER_FEATURE, 4)) s.writeDriverFeatureWord(this.driverFeatureSel, value);
    else if (field(CommonCfg.MSIX_CONFIG, 2)) this.configVector = this.vector(value);
    else if (field(CommonCfg.DEVICE_STATUS, 1)) this.writeStatus(value);
    else if (field(CommonCfg.QUEUE_SELECT, 2)) this.queueSel = value;
    else if (field(CommonCfg.QUEUE_SIZE, 2)) s.writeQueueSize(this.queueSel, value);
    else if (field(CommonCfg.QUEUE_MSIX_VECTOR, 2)) {
      if (this.queueSel < s.numQueues) this.queueVectors[this.queueSel] = this.vector(value);
    } else if (field(CommonCfg.QUEUE_ENABLE, 2)) s.writeQueueReady(this.queueSel, value === 1);
    // Read-only fields (device_feature, num_queues, config_generation, queue_notify_off) ignore writes.
  }

  /** Writing 0 resets the device (§4.1.4.3.1), and with it this transport's registers. */
  private writeStatus(value: number): void {
    if (value === 0) {
      this.state.writeStatus(0);
      this.resetTransport();
      this.intxChanged();
      return;
    }
    this.state.writeStatus(value);
  }
}
