/**
 * PCI configuration space as firmware and drivers on a PC reach it: mechanism #1, an address
 * register at port 0xcf8 selecting bus/device/function and dword, and a data window at 0xcfc
 * (port-config.ts). Everything above the raw accesses (enumeration, BAR assignment, capability
 * lists) goes through the ConfigAccess interface, so it can be exercised against an in-memory
 * configuration space.
 */

/** Bus/device/function of a PCI function, packed as in a configuration address: bus<<8 | dev<<3 | fn. */
export function bdf(bus: number, device: number, fn: number): number {
  if (!Number.isInteger(bus) || bus < 0 || bus > 255) throw new RangeError(`PCI bus ${bus} is outside 0..255`);
  if (!Number.isInteger(device) || device < 0 || device > 31) throw new RangeError(`PCI device ${device} is outside 0..31`);
  if (!Number.isInteger(fn) || fn < 0 || fn > 7) throw new RangeError(`PCI function ${fn} is outside 0..7`);
  return (bus << 8) | (device << 3) | fn;
}

/** "bb:dd.f", the way lspci names a function. */
export function formatBdf(target: number): string {
  const hex = (n: number, width: number): string => n.toString(16).padStart(width, '0');
  return `${hex(target >> 8, 2)}:${hex((target >> 3) & 0x1f, 2)}.${target & 7}`;
}

/** Offsets in the type-0 configuration header (PCI Local Bus 3.0 §6.1). */
export const ConfigReg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_ID: 0x2e,
  CAPABILITIES_POINTER: 0x34,
  INTERRUPT_PIN: 0x3d,
} as const;

export const Command = {
  IO: 0x1,
  MEMORY: 0x2,
  BUS_MASTER: 0x4,
  /** Interrupt Disable: set, the function may not assert INTx. */
  INTX_DISABLE: 0x400,
} as const;

/** Status register: the function has a capability list at CAPABILITIES_POINTER. */
export const STATUS_CAPABILITY_LIST = 0x10;

/** Bytes of configuration space mechanism #1 reaches (PCI Express's extended space needs MMCONFIG). */
export const CONFIG_SPACE_SIZE = 256;

export type ConfigWidth = 1 | 2 | 4;

/** Sized reads and writes of a function's configuration space. */
export interface ConfigAccess {
  read(target: number, offset: number, size: ConfigWidth): Promise<number>;
  write(target: number, offset: number, size: ConfigWidth, value: number): Promise<void>;
}

export interface PciFunction {
  readonly bdf: number;
  readonly vendorId: number;
  readonly deviceId: number;
}

/**
 * The whole 256-byte configuration space of `target`, read as dwords. Parsing a snapshot rather
 * than the live space means a device cannot change a structure while it is being validated.
 */
export async function readConfigSpace(config: ConfigAccess, target: number): Promise<Uint8Array> {
  const space = new Uint8Array(CONFIG_SPACE_SIZE);
  const view = new DataView(space.buffer);
  const dwords: Promise<void>[] = [];
  for (let offset = 0; offset < CONFIG_SPACE_SIZE; offset += 4) {
    dwords.push(config.read(target, offset, 4).then((v) => view.setUint32(offset, v >>> 0, true)));
  }
  await Promise.all(dwords);
  return space;
}

/** Header type bit 7: a multi-function device, whose functions 1..7 may be present too. */
const HEADER_MULTI_FUNCTION = 0x80;

/** Functions present on bus 0 (vendor id not 0xffff), in slot order. */
export async function listFunctions(config: ConfigAccess): Promise<PciFunction[]> {
  const found: PciFunction[] = [];
  for (let device = 0; device < 32; device++) {
    const fn0 = await config.read(bdf(0, device, 0), ConfigReg.VENDOR_ID, 4);
    if ((fn0 & 0xffff) === 0xffff) continue;
    const multi = ((await config.read(bdf(0, device, 0), ConfigReg.HEADER_TYPE, 1)) & HEADER_MULTI_FUNCTION) !== 0;
    for (let fn = 0; fn < (multi ? 8 : 1); fn++) {
      const id = fn === 0 ? fn0 : await config.read(bdf(0, device, fn), ConfigReg.VENDOR_ID, 4);
      if ((id & 0xffff) !== 0xffff) found.push({ bdf: bdf(0, device, fn), vendorId: id & 0xffff, deviceId: id >>> 16 });
    }
  }
  return found;
}
