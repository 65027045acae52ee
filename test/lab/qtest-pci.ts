/**
 * virtio-pci driver transports onto devices of a qtest machine: the test plays firmware (assigns
 * each function's BARs), routes the IOAPIC's inputs to the qtest stream so INTx arrives as
 * interrupt events, and shares the guest RAM above 1 MiB, mapped in this process, among the
 * drivers.
 */
import { bdf } from '../../src/transports/pci/config.ts';
import { q35IntxLine } from '../../src/transports/pci/q35.ts';
import { VirtioPciTransport } from '../../src/transports/pci/transport.ts';
import { DmaPool } from '../../src/virtio/dma.ts';
import type { QtestMachine } from './qtest.ts';

/** Below 1 MiB the guest sees ROM and VGA windows over parts of RAM. */
const DMA_START = 0x10_0000;

/**
 * One transport per slot of bus 0, in order, each with an equal share of RAM above 1 MiB.
 * Call once per machine: the shares are handed out here.
 */
export async function virtioPciTransports(m: QtestMachine, slots: readonly number[]): Promise<VirtioPciTransport[]> {
  const memory = m.memory;
  if (memory === undefined) throw new Error('a virtio-pci transport needs the machine started with sharedRam');
  const ramEnd = memory.layout.reduce((end, r) => Math.max(end, r.guestAddr + r.bytes.length), 0);
  const share = Math.floor((ramEnd - DMA_START) / slots.length / 4096) * 4096;
  await m.irqInterceptIn('ioapic');
  const transports: VirtioPciTransport[] = [];
  for (const [i, slot] of slots.entries()) {
    const target = bdf(0, slot, 0);
    const bars = await m.pci.assignBars(target);
    const dma = new DmaPool(memory, DMA_START + i * share, share);
    transports.push(await VirtioPciTransport.open(m.bus, m.pci, target, bars, { memory, dma, intxLine: q35IntxLine }));
  }
  return transports;
}

/** The transport of the one virtio function in `slot`. */
export async function virtioPciTransport(m: QtestMachine, slot: number): Promise<VirtioPciTransport> {
  const [transport] = await virtioPciTransports(m, [slot]);
  return transport;
}
