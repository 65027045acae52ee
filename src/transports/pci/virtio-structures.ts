/**
 * Where a virtio PCI device keeps its structures (§4.1.4): vendor-specific capabilities, each
 * naming a BAR and a range in it. The device supplies every field, so each is validated before a
 * register is touched: the BAR must be one that was assigned, the range must lie inside it, and
 * each structure must be large enough and aligned as its section requires.
 */
import type { PciBar } from './bars.ts';
import { CapabilityId, PciCapabilityError, listCapabilities } from './capabilities.ts';
import { CONFIG_SPACE_SIZE } from './config.ts';
import { COMMON_CFG_SIZE } from './common-cfg.ts';

/** §4.1.4 cfg_type values. */
export const VirtioPciCap = {
  COMMON_CFG: 1,
  NOTIFY_CFG: 2,
  ISR_CFG: 3,
  DEVICE_CFG: 4,
  PCI_CFG: 5,
  SHARED_MEMORY_CFG: 8,
  VENDOR_CFG: 9,
} as const;

/** A virtio structure: `length` bytes at `offset` in `bar`, checked to lie inside the BAR. */
export interface VirtioStructure {
  readonly bar: PciBar;
  readonly offset: number;
  readonly length: number;
}

export interface VirtioPciStructures {
  /** §4.1.4.3 */
  readonly common: VirtioStructure;
  /** §4.1.4.4: queue notify addresses are offsets in here. */
  readonly notify: VirtioStructure;
  /** §4.1.4.4: bytes between the notify addresses of consecutive queue_notify_off values (0: all share one). */
  readonly notifyOffMultiplier: number;
  /** §4.1.4.5 */
  readonly isr: VirtioStructure;
  /** §4.1.4.6: absent for device types without a configuration space. */
  readonly device: VirtioStructure | undefined;
  /** §4.1.4.8: offset of the PCI configuration access capability in configuration space, if present. */
  readonly pciCfg: number | undefined;
}

/** struct virtio_pci_cap: vndr, next, len, cfg_type, bar, id, padding[2], offset, length. */
export const VIRTIO_PCI_CAP_SIZE = 16;
/** Byte offsets in struct virtio_pci_cap (and the notify capability's extra dword), from the id byte. */
export const VirtioPciCapField = { LEN: 2, CFG_TYPE: 3, BAR: 4, ID: 5, OFFSET: 8, LENGTH: 12, NOTIFY_OFF_MULTIPLIER: 16 } as const;
/** struct virtio_pci_notify_cap and struct virtio_pci_cfg_cap add one dword each. */
export const VIRTIO_PCI_EXTENDED_CAP_SIZE = 20;
const CAP_SIZE = VIRTIO_PCI_CAP_SIZE;
const Field = VirtioPciCapField;
const EXTENDED_CAP_SIZE = VIRTIO_PCI_EXTENDED_CAP_SIZE;
const LAST_BAR = 5;

/** Per structure type: what its section requires of it. */
interface Requirement {
  readonly name: string;
  readonly minLength: number;
  readonly align: number;
}

/** Minimum lengths: the whole common configuration up to queue_device; a notify address; the ISR byte. */
const REQUIREMENTS: ReadonlyMap<number, Requirement> = new Map([
  [VirtioPciCap.COMMON_CFG, { name: 'common configuration', minLength: COMMON_CFG_SIZE, align: 4 }],
  [VirtioPciCap.NOTIFY_CFG, { name: 'notification', minLength: 2, align: 2 }],
  [VirtioPciCap.ISR_CFG, { name: 'ISR status', minLength: 1, align: 1 }],
  [VirtioPciCap.DEVICE_CFG, { name: 'device configuration', minLength: 1, align: 4 }],
]);

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Why the structure a capability describes cannot be used, or undefined. */
function structureProblem(req: Requirement, cfgType: number, capLen: number, view: DataView, at: number, bar: PciBar | undefined): string | undefined {
  const barIndex = view.getUint8(at + Field.BAR);
  const offset = view.getUint32(at + Field.OFFSET, true);
  const length = view.getUint32(at + Field.LENGTH, true);
  if (bar === undefined) return `it names BAR ${barIndex}, which is not an assigned BAR`;
  if (length < req.minLength) return `its length ${length} is below the ${req.minLength} bytes of the structure`;
  if (offset % req.align !== 0) return `its offset 0x${offset.toString(16)} is not ${req.align}-byte aligned`;
  if (offset + length > bar.size) {
    return `offset 0x${offset.toString(16)} + length 0x${length.toString(16)} reaches past the end of BAR ${barIndex} (0x${bar.size.toString(16)} bytes)`;
  }
  if (cfgType === VirtioPciCap.NOTIFY_CFG) {
    if (capLen < EXTENDED_CAP_SIZE) return `its cap_len ${capLen} leaves out notify_off_multiplier`;
    const multiplier = view.getUint32(at + Field.NOTIFY_OFF_MULTIPLIER, true);
    // §4.1.4.4: an even power of 2, or 0.
    if (multiplier !== 0 && (multiplier === 1 || !isPowerOfTwo(multiplier))) return `notify_off_multiplier ${multiplier} is neither 0 nor an even power of 2`;
  }
  return undefined;
}

/**
 * The structures of the function whose configuration space is `space` and whose assigned BARs are
 * `bars`. The first usable capability of each type wins (§4.1.4: the device lists them in order
 * of preference); capabilities with a reserved cfg_type or bar are ignored as §4.1.4 requires.
 * Throws PciCapabilityError naming what is wrong when a required structure has no usable instance,
 * or when the device configuration structure is present only in unusable form.
 */
export function findVirtioStructures(space: Uint8Array, bars: readonly PciBar[]): VirtioPciStructures {
  const view = new DataView(space.buffer, space.byteOffset, space.length);
  const chosen = new Map<number, VirtioStructure & { multiplier: number }>();
  const problems = new Map<number, string>();
  let pciCfg: number | undefined;
  for (const cap of listCapabilities(space)) {
    if (cap.id !== CapabilityId.VENDOR_SPECIFIC) continue;
    const at = cap.offset;
    // The id and next bytes are inside the snapshot (listCapabilities), and so is cfg_type at
    // offset 3 of a dword-aligned capability; the rest is read only once cap_len says it is there.
    const capLen = space[at + Field.LEN];
    const cfgType = space[at + Field.CFG_TYPE];
    const req = REQUIREMENTS.get(cfgType);
    if (capLen < CAP_SIZE || at + capLen > CONFIG_SPACE_SIZE) {
      if (req !== undefined && !chosen.has(cfgType)) {
        problems.set(cfgType, problems.get(cfgType) ?? `the ${req.name} capability at 0x${at.toString(16)} is unusable: cap_len ${capLen} does not hold a struct virtio_pci_cap inside configuration space`);
      }
      continue;
    }
    // §4.1.4: a reserved bar means the capability is not meant for this driver.
    if (space[at + Field.BAR] > LAST_BAR) continue;
    if (cfgType === VirtioPciCap.PCI_CFG) {
      if (pciCfg === undefined && capLen >= EXTENDED_CAP_SIZE) pciCfg = at;
      continue;
    }
    if (req === undefined || chosen.has(cfgType)) continue;
    const bar = bars.find((b) => b.index === space[at + Field.BAR]);
    const problem = structureProblem(req, cfgType, capLen, view, at, bar);
    if (problem !== undefined || bar === undefined) {
      problems.set(cfgType, problems.get(cfgType) ?? `the ${req.name} capability at 0x${at.toString(16)} is unusable: ${problem}`);
      continue;
    }
    chosen.set(cfgType, {
      bar,
      offset: view.getUint32(at + Field.OFFSET, true),
      length: view.getUint32(at + Field.LENGTH, true),
      multiplier: cfgType === VirtioPciCap.NOTIFY_CFG ? view.getUint32(at + Field.NOTIFY_OFF_MULTIPLIER, true) : 0,
    });
  }
  const required = (cfgType: number): VirtioStructure & { multiplier: number } => {
    const found = chosen.get(cfgType);
    if (found !== undefined) return found;
    const name = REQUIREMENTS.get(cfgType)?.name ?? `type ${cfgType}`;
    throw new PciCapabilityError(problems.get(cfgType) ?? `the device has no ${name} capability (§4.1.4)`);
  };
  const strip = (s: VirtioStructure): VirtioStructure => ({ bar: s.bar, offset: s.offset, length: s.length });
  const notify = required(VirtioPciCap.NOTIFY_CFG);
  // Optional, but a device that offers one only in a broken form is broken, not without one.
  const device = problems.has(VirtioPciCap.DEVICE_CFG) ? required(VirtioPciCap.DEVICE_CFG) : chosen.get(VirtioPciCap.DEVICE_CFG);
  return {
    common: strip(required(VirtioPciCap.COMMON_CFG)),
    notify: strip(notify),
    notifyOffMultiplier: notify.multiplier,
    isr: strip(required(VirtioPciCap.ISR_CFG)),
    device: device && strip(device),
    pciCfg,
  };
}
