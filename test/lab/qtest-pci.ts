/**
 * A virtio-pci driver transport onto a device of a qtest machine: the test plays firmware
 * (assigns the function's BARs), routes the IOAPIC's inputs to the qtest stream so INTx arrives
 * as interrupt events, and gives the driver the guest RAM above 1 MiB, mapped in this process.
 */
import { bdf } from '../../src/transports/pci/config.ts';
import { q35IntxLine } from '../../src/transports/pci/q35.ts';
import { VirtioPciTransport } from '../../src/transports/pci/transport.ts';
import { DmaPool } from '../../src/virtio/dma.ts';
import type { QtestMachine } from './qtest.ts';

/** Below 1 MiB the guest sees ROM and VGA windows over parts of RAM. */
const DMA_START = 0x10_0000;

/** A transport for the virtio function in `slot` of bus 0 (one per machine: it owns all RAM above 1 MiB). */
export async function virtioPciTransport(m: QtestMachine, slot: number): Promise<VirtioPciTransport> {
  const memory = m.memory;
  if (memory === undefined) throw new Error('a virtio-pci transport needs the machine started with sharedRam');
  const ramEnd = memory.layout.reduce((end, r) => Math.max(end, r.guestAddr + r.bytes.length), 0);
  await m.irqInterceptIn('ioapic');
  const target = bdf(0, slot, 0);
  const bars = await m.pci.assignBars(target);
  const dma = new DmaPool(memory, DMA_START, ramEnd - DMA_START);
  return VirtioPciTransport.open(m.bus, m.pci, target, bars, { memory, dma, intxLine: q35IntxLine });
}
