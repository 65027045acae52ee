/**
 * What one vfio-user client may do to a PCI function, message by message, with no I/O of its
 * own (connection.ts moves the bytes): the version handshake, DMA maps of guest memory, device,
 * region and interrupt information, interrupt set-up, region reads and writes, reset.
 *
 * Every field comes from the client and is checked before use: sizes against the structure
 * (argsz and the message's own length), region and interrupt indexes, offsets and counts against
 * the region, descriptors against what the command takes. A bad message gets an error reply
 * with an errno; the device is never touched by it. Descriptors a message should not carry are
 * closed.
 */
import type { Logger } from 'pino';
import { closeAll } from '../../native/fd.ts';
import { mapRegion } from '../vhost-user/backend-ports.ts';
import { MemoryTable, type MapRegion } from '../vhost-user/memory-table.ts';
import type { PciFunction } from '../pci-device/function.ts';
import type { PciInterruptSink } from '../pci-device/virtio-pci.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import { ClientInterrupts } from './irqs.ts';
import type { Message } from './framer.ts';
import {
  Command,
  DMA_PAGE_SIZE,
  DeviceInfoFlag,
  DmaFlag,
  DmaUnmapFlag,
  Errno,
  HeaderFlag,
  IrqInfoFlag,
  IrqSetFlag,
  MAX_DATA_TRANSFER,
  MAX_DMA_MAPS,
  MAX_MESSAGE_FDS,
  PayloadSize,
  PciIrq,
  PciRegion,
  RegionFlag,
  RequestError,
  VERSION_MAJOR,
  VERSION_MINOR,
  encodeReply,
} from './protocol.ts';
import { CONFIG_SPACE_SIZE } from '../pci/config.ts';

/** The PCI function a client drives: virtio-pci, or any other device built on PciFunction. */
export interface PciEndpoint {
  readonly pci: PciFunction;
  readonly msixVectors: number;
  attachInterrupts(sink: PciInterruptSink | undefined): void;
  useMemory(memory: GuestMemory | undefined): void;
  /** Function-level reset. */
  reset(): void;
}

/** What to send back: nothing (a posted write), or a reply with the descriptors it carries (stay owned by the server). */
export type Outcome = { readonly reply: Uint8Array; readonly fds?: readonly number[] } | undefined;

interface DmaRange {
  readonly iova: number;
  readonly size: number;
  readonly mapped: boolean;
}

/** Error replies logged at warn per client before the rest go to debug: one line each, never a flood. */
const WARNED_ERRORS = 8;

export class Session {
  private versioned = false;
  private readonly table: MemoryTable;
  private dma: DmaRange[] = [];
  private readonly irqs: ClientInterrupts;
  private warned = 0;
  private unbackedLogged = false;
  /** Descriptors the reply being built carries (a region's shared memory). */
  private replyFds: number[] = [];

  constructor(
    private readonly endpoint: PciEndpoint,
    private readonly log: Logger,
    map: MapRegion = mapRegion,
  ) {
    this.table = new MemoryTable(map);
    this.irqs = new ClientInterrupts(endpoint.msixVectors, log);
    endpoint.attachInterrupts(this.irqs);
  }

  /** Handle one message; never throws for anything the client sent. */
  handle(message: Message): Outcome {
    const { header } = message;
    const noReply = (header.flags & HeaderFlag.NO_REPLY) !== 0;
    // Commands that keep descriptors take them out of this array; the rest are closed at the end.
    const fds = message.fds;
    try {
      if ((header.flags & HeaderFlag.TYPE_MASK) !== HeaderFlag.COMMAND) throw new RequestError(Errno.EINVAL, 'a client sends commands, not replies');
      if (fds.length > MAX_MESSAGE_FDS) throw new RequestError(Errno.EINVAL, `${fds.length} descriptors exceed max_msg_fds ${MAX_MESSAGE_FDS}`);
      if (!this.versioned && header.command !== Command.VERSION) throw new RequestError(Errno.EINVAL, `command ${header.command} before VERSION`);
      this.replyFds = [];
      const payload = this.dispatch(message);
      return noReply ? undefined : { reply: encodeReply(header, payload), fds: this.replyFds };
    } catch (err) {
      this.replyFds = [];
      if (!(err instanceof RequestError)) throw err;
      this.refused(header.command, header.id, err.message);
      return noReply ? undefined : { reply: encodeReply(header, new Uint8Array(0), err.errno) };
    } finally {
      closeAll(fds.splice(0));
    }
  }

  /** The client went away: interrupts closed, memory unmapped, the function reset for the next one. */
  close(): void {
    this.endpoint.attachInterrupts(undefined);
    this.endpoint.reset();
    this.endpoint.useMemory(undefined);
    for (const m of this.table.clear()) m.unmap();
    this.irqs.close();
  }

  private refused(command: number, id: number, reason: string): void {
    const fields = { command, id };
    if (this.warned < WARNED_ERRORS) {
      this.warned++;
      this.log.warn(fields, `vfio-user request refused: ${reason}`);
    } else {
      this.log.debug(fields, `vfio-user request refused: ${reason}`);
    }
  }

  private dispatch(message: Message): Uint8Array {
    const { header, payload, fds } = message;
    const takesFds = header.command === Command.DMA_MAP || header.command === Command.DEVICE_SET_IRQS;
    if (!takesFds && fds.length > 0) throw new RequestError(Errno.EINVAL, `command ${header.command} carries no descriptors, got ${fds.length}`);
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    switch (header.command) {
      case Command.VERSION:
        return this.version(payload, view);
      case Command.DMA_MAP:
        return this.dmaMap(view, fds);
      case Command.DMA_UNMAP:
        return this.dmaUnmap(payload, view);
      case Command.DEVICE_GET_INFO:
        return this.deviceInfo(view);
      case Command.DEVICE_GET_REGION_INFO:
        return this.regionInfo(view);
      case Command.DEVICE_GET_IRQ_INFO:
        return this.irqInfo(view);
      case Command.DEVICE_SET_IRQS:
        return this.setIrqs(payload, view, fds);
      case Command.REGION_READ:
        return this.regionRead(view);
      case Command.REGION_WRITE:
        return this.regionWrite(payload, view);
      case Command.DEVICE_RESET:
        this.endpoint.reset();
        return new Uint8Array(0);
      default:
        throw new RequestError(Errno.ENOTSUP, `command ${header.command} is not supported`);
    }
  }

  private static need(view: DataView, size: number, what: string): void {
    if (view.byteLength < size) throw new RequestError(Errno.EINVAL, `${what} payload of ${view.byteLength} bytes is shorter than its ${size}-byte structure`);
  }

  /** argsz must cover the structure and fit in the message (vfio.h's rule for every ioctl structure). */
  private static argsz(view: DataView, size: number, what: string): number {
    Session.need(view, size, what);
    const argsz = view.getUint32(0, true);
    if (argsz < size) throw new RequestError(Errno.EINVAL, `${what} argsz ${argsz} is below ${size}`);
    return argsz;
  }

  // --- VERSION ---

  private version(payload: Uint8Array, view: DataView): Uint8Array {
    Session.need(view, PayloadSize.VERSION, 'VERSION');
    const major = view.getUint16(0, true);
    if (major !== VERSION_MAJOR) throw new RequestError(Errno.ENOTSUP, `client protocol major version ${major} is not ${VERSION_MAJOR}`);
    const json = payload.subarray(PayloadSize.VERSION);
    if (json.length > 0) {
      // "version data": a NUL-terminated JSON object; the client's limits matter only for what
      // the server sends, and this server sends at most one descriptor per message.
      if (json[json.length - 1] !== 0) throw new RequestError(Errno.EINVAL, 'VERSION capabilities are not NUL-terminated');
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.from(json.subarray(0, json.length - 1)).toString('utf8'));
      } catch {
        throw new RequestError(Errno.EINVAL, 'VERSION capabilities are not JSON');
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new RequestError(Errno.EINVAL, 'VERSION capabilities are not a JSON object');
    }
    this.versioned = true;
    const caps = JSON.stringify({
      capabilities: { max_msg_fds: MAX_MESSAGE_FDS, max_data_xfer_size: MAX_DATA_TRANSFER, pgsizes: DMA_PAGE_SIZE, max_dma_maps: MAX_DMA_MAPS },
    });
    const text = Buffer.from(`${caps}\0`, 'utf8');
    const out = new Uint8Array(PayloadSize.VERSION + text.length);
    const v = new DataView(out.buffer);
    v.setUint16(0, VERSION_MAJOR, true);
    v.setUint16(2, VERSION_MINOR, true);
    out.set(text, PayloadSize.VERSION);
    return out;
  }

  // --- DMA ---

  private static range(view: DataView, at: number, what: string): { iova: number; size: number } {
    const iova = view.getBigUint64(at, true);
    const size = view.getBigUint64(at + 8, true);
    const page = BigInt(DMA_PAGE_SIZE);
    if (size === 0n || iova % page !== 0n || size % page !== 0n) {
      throw new RequestError(Errno.EINVAL, `${what} of 0x${size.toString(16)} bytes at 0x${iova.toString(16)} is empty or not ${DMA_PAGE_SIZE}-byte aligned`);
    }
    if (iova + size > 2n ** 52n) throw new RequestError(Errno.EINVAL, `${what} at 0x${iova.toString(16)} reaches past 2^52`);
    return { iova: Number(iova), size: Number(size) };
  }

  private dmaMap(view: DataView, fds: readonly number[]): Uint8Array {
    Session.argsz(view, PayloadSize.DMA_MAP, 'DMA_MAP');
    const flags = view.getUint32(4, true);
    const offset = view.getBigUint64(8, true);
    const { iova, size } = Session.range(view, 16, 'DMA_MAP');
    if (flags & ~(DmaFlag.READ | DmaFlag.WRITE)) throw new RequestError(Errno.EINVAL, `DMA_MAP flags 0x${flags.toString(16)} are not READ/WRITE`);
    if (fds.length > 1) throw new RequestError(Errno.EINVAL, `DMA_MAP carries ${fds.length} descriptors, not at most 1`);
    if (this.dma.length >= MAX_DMA_MAPS) throw new RequestError(Errno.ENOSPC, `already ${MAX_DMA_MAPS} DMA maps (max_dma_maps)`);
    if (this.dma.some((r) => iova < r.iova + r.size && r.iova < iova + size)) {
      throw new RequestError(Errno.EEXIST, `DMA_MAP at 0x${iova.toString(16)} overlaps an existing map`);
    }
    if (fds.length === 0) {
      // Guest memory the server cannot reach: DMA_READ/WRITE are not implemented, so the device
      // fails any buffer placed there (a guest-memory fault, DEVICE_NEEDS_RESET). Said once per client.
      if (!this.unbackedLogged) {
        this.unbackedLogged = true;
        this.log.info({ iova, size }, 'DMA map without a descriptor recorded; the device cannot reach memory there');
      }
      this.dma.push({ iova, size, mapped: false });
      return new Uint8Array(0);
    }
    if (offset >= 2n ** 52n) throw new RequestError(Errno.EINVAL, `DMA_MAP file offset 0x${offset.toString(16)} is beyond 2^52`);
    try {
      this.table.add({ guestAddr: BigInt(iova), size: BigInt(size), userAddr: BigInt(iova), mmapOffset: offset }, fds[0]);
    } catch (err) {
      throw new RequestError(Errno.EINVAL, `DMA_MAP at 0x${iova.toString(16)}: ${(err as Error).message}`);
    }
    this.dma.push({ iova, size, mapped: true });
    this.endpoint.useMemory(this.table.memory);
    return new Uint8Array(0);
  }

  private dmaUnmap(payload: Uint8Array, view: DataView): Uint8Array {
    Session.argsz(view, PayloadSize.DMA_UNMAP, 'DMA_UNMAP');
    const flags = view.getUint32(4, true);
    if (flags & DmaUnmapFlag.GET_DIRTY_BITMAP) throw new RequestError(Errno.ENOTSUP, 'DMA_UNMAP dirty bitmaps are not supported');
    if (flags & ~DmaUnmapFlag.ALL) throw new RequestError(Errno.EINVAL, `DMA_UNMAP flags 0x${flags.toString(16)} are unknown`);
    let gone: DmaRange[];
    if (flags & DmaUnmapFlag.ALL) {
      gone = this.dma;
    } else {
      const { iova, size } = Session.range(view, 8, 'DMA_UNMAP');
      const touched = this.dma.filter((r) => iova < r.iova + r.size && r.iova < iova + size);
      // vfio's rule: a map is removed whole or not at all, so a range cutting one is refused.
      if (touched.some((r) => r.iova < iova || r.iova + r.size > iova + size)) {
        throw new RequestError(Errno.EINVAL, `DMA_UNMAP of 0x${size.toString(16)} bytes at 0x${iova.toString(16)} cuts a map in two`);
      }
      gone = touched;
    }
    for (const r of gone.filter((g) => g.mapped)) {
      const mappings = this.table.remove({ guestAddr: BigInt(r.iova), size: BigInt(r.size), userAddr: BigInt(r.iova), mmapOffset: 0n });
      for (const m of mappings) m.unmap();
    }
    this.dma = this.dma.filter((r) => !gone.includes(r));
    this.endpoint.useMemory(this.table.memory);
    return payload.slice(0, PayloadSize.DMA_UNMAP);
  }

  // --- information ---

  private deviceInfo(view: DataView): Uint8Array {
    Session.argsz(view, PayloadSize.DEVICE_INFO, 'DEVICE_GET_INFO');
    const out = new Uint8Array(PayloadSize.DEVICE_INFO);
    const v = new DataView(out.buffer);
    v.setUint32(0, PayloadSize.DEVICE_INFO, true);
    v.setUint32(4, DeviceInfoFlag.PCI | DeviceInfoFlag.RESET, true);
    v.setUint32(8, PciRegion.COUNT, true);
    v.setUint32(12, PciIrq.COUNT, true);
    return out;
  }

  /** Size of region `index`: a BAR's, the configuration space's, or 0 for ROM, VGA and absent BARs. */
  private regionSize(index: number): number {
    if (index <= PciRegion.BAR5) return this.endpoint.pci.bars[index]?.size ?? 0;
    return index === PciRegion.CONFIG ? CONFIG_SPACE_SIZE : 0;
  }

  private regionInfo(view: DataView): Uint8Array {
    const argsz = Session.argsz(view, PayloadSize.REGION_INFO, 'DEVICE_GET_REGION_INFO');
    const index = view.getUint32(8, true);
    if (index >= PciRegion.COUNT) throw new RequestError(Errno.EINVAL, `region ${index} does not exist (${PciRegion.COUNT} regions)`);
    const size = this.regionSize(index);
    // A BAR backed by shared memory is offered for mmap: the reply carries its descriptor, and
    // the whole region maps from file offset 0 (no sparse areas).
    const sharedFd = index <= PciRegion.BAR5 ? this.endpoint.pci.bars[index]?.sharedFd : undefined;
    if (sharedFd !== undefined) this.replyFds = [sharedFd];
    const out = new Uint8Array(Math.min(argsz, PayloadSize.REGION_INFO));
    const v = new DataView(out.buffer);
    v.setUint32(0, PayloadSize.REGION_INFO, true);
    v.setUint32(4, size === 0 ? 0 : RegionFlag.READ | RegionFlag.WRITE | (sharedFd !== undefined ? RegionFlag.MMAP : 0), true);
    v.setUint32(8, index, true);
    v.setUint32(12, 0, true);
    v.setBigUint64(16, BigInt(size), true);
    v.setBigUint64(24, 0n, true);
    return out;
  }

  private irqCount(index: number): number {
    switch (index) {
      case PciIrq.INTX:
        return this.endpoint.pci.configView().getUint8(0x3d) !== 0 ? 1 : 0;
      case PciIrq.MSIX:
        return this.irqs.msixVectors;
      default:
        return 0;
    }
  }

  private irqInfo(view: DataView): Uint8Array {
    Session.argsz(view, PayloadSize.IRQ_INFO, 'DEVICE_GET_IRQ_INFO');
    const index = view.getUint32(8, true);
    if (index >= PciIrq.COUNT) throw new RequestError(Errno.EINVAL, `interrupt index ${index} does not exist (${PciIrq.COUNT} indexes)`);
    const flags =
      index === PciIrq.INTX
        ? IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.AUTOMASKED
        : IrqInfoFlag.EVENTFD | IrqInfoFlag.NORESIZE;
    const out = new Uint8Array(PayloadSize.IRQ_INFO);
    const v = new DataView(out.buffer);
    v.setUint32(0, PayloadSize.IRQ_INFO, true);
    v.setUint32(4, flags, true);
    v.setUint32(8, index, true);
    v.setUint32(12, this.irqCount(index), true);
    return out;
  }

  // --- interrupts ---

  private setIrqs(payload: Uint8Array, view: DataView, fds: number[]): Uint8Array {
    const argsz = Session.argsz(view, PayloadSize.IRQ_SET, 'DEVICE_SET_IRQS');
    const flags = view.getUint32(4, true);
    const index = view.getUint32(8, true);
    const start = view.getUint32(12, true);
    const count = view.getUint32(16, true);
    const data = flags & IrqSetFlag.DATA_MASK;
    const action = flags & IrqSetFlag.ACTION_MASK_ALL;
    const single = (bits: number): boolean => bits !== 0 && (bits & (bits - 1)) === 0;
    if (flags & ~(IrqSetFlag.DATA_MASK | IrqSetFlag.ACTION_MASK_ALL) || !single(data) || !single(action)) {
      throw new RequestError(Errno.EINVAL, `DEVICE_SET_IRQS flags 0x${flags.toString(16)} are not one data type and one action`);
    }
    if (index >= PciIrq.COUNT) throw new RequestError(Errno.EINVAL, `interrupt index ${index} does not exist`);
    const available = this.irqCount(index);
    if (count > 0 && (start >= available || count > available - start)) {
      throw new RequestError(Errno.EINVAL, `interrupts ${start}..${start + count - 1} of index ${index} are beyond its ${available}`);
    }
    if (data !== IrqSetFlag.DATA_EVENTFD && fds.length > 0) throw new RequestError(Errno.EINVAL, 'DEVICE_SET_IRQS without DATA_EVENTFD carries descriptors');
    let bools: Uint8Array | undefined;
    if (data === IrqSetFlag.DATA_BOOL) {
      if (argsz < PayloadSize.IRQ_SET + count || payload.length < PayloadSize.IRQ_SET + count) throw new RequestError(Errno.EINVAL, `DEVICE_SET_IRQS holds fewer than ${count} booleans`);
      bools = payload.subarray(PayloadSize.IRQ_SET, PayloadSize.IRQ_SET + count);
    }
    if (action === IrqSetFlag.ACTION_TRIGGER) this.trigger(index, start, count, data, fds, bools);
    else this.mask(index, start, count, data, action === IrqSetFlag.ACTION_MASK, bools);
    return new Uint8Array(0);
  }

  private trigger(index: number, start: number, count: number, data: number, fds: number[], bools: Uint8Array | undefined): void {
    if (data === IrqSetFlag.DATA_EVENTFD) {
      // Descriptors for each interrupt, or none to take them all away (QEMU sends runs of -1 as none).
      if (fds.length !== 0 && fds.length !== count) throw new RequestError(Errno.EINVAL, `DEVICE_SET_IRQS for ${count} interrupts carries ${fds.length} descriptors`);
      if (count === 0) throw new RequestError(Errno.EINVAL, 'DEVICE_SET_IRQS with DATA_EVENTFD names no interrupt');
      if (index === PciIrq.INTX) this.irqs.assignIntx(fds.length === 0 ? undefined : fds.splice(0)[0]);
      else if (fds.length === 0) this.irqs.deassignMsix(start, count);
      else this.irqs.assignMsix(start, fds.splice(0));
      return;
    }
    if (data === IrqSetFlag.DATA_NONE && count === 0) {
      // vfio: DATA_NONE with count 0 disables every interrupt of the index.
      if (index === PciIrq.INTX) this.irqs.assignIntx(undefined);
      else this.irqs.deassignMsix(0, this.irqs.msixVectors);
      return;
    }
    for (let i = 0; i < count; i++) {
      if (bools !== undefined && bools[i] === 0) continue;
      if (index === PciIrq.INTX) this.irqs.intx(true);
      else this.irqs.triggerMsix(start + i, 1);
    }
  }

  /** Only INTx is maskable (as in vfio-pci): MSI-X masking is the client's, in its emulated table. */
  private mask(index: number, start: number, count: number, data: number, mask: boolean, bools: Uint8Array | undefined): void {
    if (index !== PciIrq.INTX) throw new RequestError(Errno.EINVAL, `interrupt index ${index} is not maskable`);
    if (data === IrqSetFlag.DATA_EVENTFD) throw new RequestError(Errno.ENOTSUP, 'INTx unmask eventfds are not supported');
    if (start !== 0 || count !== 1) throw new RequestError(Errno.EINVAL, `INTx mask names interrupts ${start}..${start + count - 1}, not 0`);
    if (bools !== undefined && bools[0] === 0) return;
    if (mask) this.irqs.maskIntx();
    else this.irqs.unmaskIntx();
  }

  // --- region access ---

  private access(view: DataView): { offset: number; region: number; count: number } {
    Session.need(view, PayloadSize.REGION_ACCESS, 'region access');
    const offset = view.getBigUint64(0, true);
    const region = view.getUint32(8, true);
    const count = view.getUint32(12, true);
    if (region >= PciRegion.COUNT) throw new RequestError(Errno.EINVAL, `region ${region} does not exist`);
    const size = this.regionSize(region);
    if (count === 0 || count > MAX_DATA_TRANSFER || offset + BigInt(count) > BigInt(size)) {
      throw new RequestError(Errno.EINVAL, `access of ${count} bytes at 0x${offset.toString(16)} is outside region ${region} (${size} bytes)`);
    }
    return { offset: Number(offset), region, count };
  }

  private regionRead(view: DataView): Uint8Array {
    const { offset, region, count } = this.access(view);
    if (view.byteLength !== PayloadSize.REGION_ACCESS) throw new RequestError(Errno.EINVAL, 'REGION_READ carries data');
    const out = new Uint8Array(PayloadSize.REGION_ACCESS + count);
    out.set(new Uint8Array(view.buffer, view.byteOffset, PayloadSize.REGION_ACCESS));
    const data = out.subarray(PayloadSize.REGION_ACCESS);
    if (region === PciRegion.CONFIG) this.endpoint.pci.readConfig(offset, data);
    else this.endpoint.pci.bars[region]!.read(offset, data);
    return out;
  }

  private regionWrite(payload: Uint8Array, view: DataView): Uint8Array {
    const { offset, region, count } = this.access(view);
    if (payload.length !== PayloadSize.REGION_ACCESS + count) {
      throw new RequestError(Errno.EINVAL, `REGION_WRITE of ${count} bytes carries ${payload.length - PayloadSize.REGION_ACCESS}`);
    }
    const data = payload.subarray(PayloadSize.REGION_ACCESS);
    if (region === PciRegion.CONFIG) this.endpoint.pci.writeConfig(offset, data);
    else this.endpoint.pci.bars[region]!.write(offset, data);
    return payload.slice(0, PayloadSize.REGION_ACCESS);
  }
}
