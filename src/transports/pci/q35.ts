/**
 * What a PC with QEMU's q35 chipset (ICH9) looks like to PCI code, when no firmware has run:
 * where BARs may go, and which IOAPIC input a function's INTx pin reaches.
 */
import type { BarWindows } from './bars.ts';

/**
 * With less than 2816 MiB of RAM: memory BARs from 0xe0000000 (above RAM and the PCI Express
 * MMCONFIG window QEMU leaves unmapped until firmware enables it) up to the IOAPIC at 0xfec00000;
 * ports from 0xc000, above the legacy ISA devices.
 */
export const Q35_BAR_WINDOWS: BarWindows = {
  memory: { start: 0xe000_0000, end: 0xfec0_0000 },
  io: { start: 0xc000, end: 0x1_0000 },
};

/** Slots 25..31 are routed by the chipset's D25IR..D31IR registers, which firmware programs. */
const LAST_FIXED_SLOT = 24;
const FIRST_PIRQ_GSI = 16;

/**
 * The IOAPIC input (GSI) that INTx pin `pin` (1 = INTA .. 4 = INTD, as in the Interrupt Pin
 * register) of a function in `slot` on bus 0 reaches. ICH9 routes slot/pin to PIRQ E..H
 * round-robin, (slot + pin - 1) mod 4 + 4 (QEMU's ich9_cc_init), and PIRQ n drives GSI 16 + n
 * whatever its PIC routing says.
 */
export function q35IntxLine(slot: number, pin: number): number {
  if (!Number.isInteger(slot) || slot < 0 || slot > LAST_FIXED_SLOT) {
    throw new RangeError(`q35 INTx routing of slot ${slot} is not fixed (only slots 0..${LAST_FIXED_SLOT} are)`);
  }
  if (!Number.isInteger(pin) || pin < 1 || pin > 4) throw new RangeError(`interrupt pin ${pin} is not one of 1 (INTA) .. 4 (INTD)`);
  return FIRST_PIRQ_GSI + ((slot + pin - 1) % 4) + 4;
}
