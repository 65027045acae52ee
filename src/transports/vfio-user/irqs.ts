/**
 * The interrupts a vfio-user client asked for (DEVICE_SET_IRQS): an eventfd per MSI-X vector,
 * and INTx as a level-triggered, automasked line (vfio's semantics: delivering an assertion
 * masks the line until the client unmasks it after the guest's EOI; still asserted then, it
 * fires again).
 */
import type { Logger } from 'pino';
import { EventFd } from '../../native/eventfd.ts';
import type { PciInterruptSink } from '../pci-device/virtio-pci.ts';

export class ClientInterrupts implements PciInterruptSink {
  private readonly msixFds: (EventFd | undefined)[];
  private intxFd: EventFd | undefined;
  private intxLevel = false;
  private intxMasked = false;

  constructor(
    msixVectors: number,
    private readonly log: Logger,
  ) {
    this.msixFds = new Array<EventFd | undefined>(msixVectors).fill(undefined);
  }

  get msixVectors(): number {
    return this.msixFds.length;
  }

  msix(vector: number): void {
    this.fire(this.msixFds[vector]);
  }

  intx(asserted: boolean): void {
    this.intxLevel = asserted;
    if (asserted && !this.intxMasked) this.deliverIntx();
  }

  /** Unmask INTx (after the guest's EOI): a line still asserted fires again (level semantics). */
  unmaskIntx(): void {
    this.intxMasked = false;
    if (this.intxLevel) this.deliverIntx();
  }

  maskIntx(): void {
    this.intxMasked = true;
  }

  private deliverIntx(): void {
    if (this.intxFd === undefined) return;
    this.intxMasked = true;
    this.fire(this.intxFd);
  }

  /** Take ownership of `fds` as the eventfds of MSI-X vectors start.. (or INTx), closing any they replace. */
  assignMsix(start: number, fds: readonly number[]): void {
    fds.forEach((fd, i) => {
      this.msixFds[start + i]?.close();
      this.msixFds[start + i] = EventFd.adopt(fd);
    });
  }

  deassignMsix(start: number, count: number): void {
    for (let i = start; i < start + count; i++) {
      this.msixFds[i]?.close();
      this.msixFds[i] = undefined;
    }
  }

  assignIntx(fd: number | undefined): void {
    this.intxFd?.close();
    this.intxFd = fd === undefined ? undefined : EventFd.adopt(fd);
    this.intxMasked = false;
    if (this.intxFd !== undefined && this.intxLevel) this.deliverIntx();
  }

  /** Signal vectors as the client asked (ACTION_TRIGGER without eventfds: a loopback test). */
  triggerMsix(start: number, count: number): void {
    for (let i = start; i < start + count; i++) this.msix(i);
  }

  close(): void {
    this.deassignMsix(0, this.msixFds.length);
    this.assignIntx(undefined);
  }

  private fire(fd: EventFd | undefined): void {
    if (fd === undefined) return;
    try {
      fd.signal();
    } catch (err) {
      // The client sent something that is not an eventfd: its interrupts are lost, not the process.
      this.log.debug({ err: (err as Error).message }, 'signalling an interrupt eventfd failed');
    }
  }
}
