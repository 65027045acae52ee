/**
 * The PCI capability list (PCI Local Bus 3.0 §6.7): a chain of structures in configuration space,
 * each starting with an id byte and a next pointer. The device writes the chain, so it is hostile
 * input: a pointer into the header or past the end, or a chain that loops, is refused with an
 * error naming it. Walking a snapshot bounds the walk by the 48 dword slots after the header.
 */
import { CONFIG_SPACE_SIZE, ConfigReg, STATUS_CAPABILITY_LIST } from './config.ts';

/** Capability ids this project reads. */
export const CapabilityId = {
  MSIX: 0x11,
  VENDOR_SPECIFIC: 0x09,
} as const;

export interface PciCapability {
  readonly id: number;
  /** Offset of the capability's id byte in configuration space. */
  readonly offset: number;
}

/** A capability list or structure that cannot be right. */
export class PciCapabilityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PciCapabilityError';
  }
}

/** Capabilities live after the 64-byte standard header. */
const FIRST_CAPABILITY_OFFSET = 0x40;
/** The low two bits of a capability pointer are reserved (§6.7): software masks them. */
const POINTER_MASK = 0xfc;

/** The capabilities of the function whose configuration space is `space`, in list order. */
export function listCapabilities(space: Uint8Array): PciCapability[] {
  if (space.length !== CONFIG_SPACE_SIZE) throw new RangeError(`a configuration space snapshot is ${CONFIG_SPACE_SIZE} bytes, not ${space.length}`);
  const view = new DataView(space.buffer, space.byteOffset, space.length);
  if (!(view.getUint16(ConfigReg.STATUS, true) & STATUS_CAPABILITY_LIST)) return [];
  const found: PciCapability[] = [];
  const seen = new Set<number>();
  for (let at = space[ConfigReg.CAPABILITIES_POINTER] & POINTER_MASK; at !== 0; at = space[at + 1] & POINTER_MASK) {
    // Masking keeps every pointer dword aligned and below 0x100, so id and next are always inside the snapshot.
    if (at < FIRST_CAPABILITY_OFFSET) {
      throw new PciCapabilityError(`capability pointer 0x${at.toString(16)} points into the configuration header`);
    }
    if (seen.has(at)) throw new PciCapabilityError(`the capability list loops back to 0x${at.toString(16)}`);
    seen.add(at);
    found.push({ id: space[at], offset: at });
  }
  return found;
}
