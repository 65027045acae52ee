/**
 * The QXL display device (spice-protocol qxl_dev.h; the behaviour of QEMU's hw/display/qxl.c):
 * a PCI function whose RAM and VRAM BARs are shared memory the guest maps directly, a ROM BAR,
 * and an I/O BAR of ports. The driver puts commands in the rings of the RAM header and rings the
 * NOTIFY port; the device executes them at once (draws land in the surfaces' guest memory), hands
 * each command back through the release ring, and raises INTx for the interrupts the driver
 * unmasked in int_mask.
 *
 * A driver error (a bad memslot address, a chunk loop, indices out of range, an unknown port) is
 * QEMU's "guest bug": logged, QXL_INTERRUPT_ERROR raised, and nothing but RESET served until the
 * driver resets the device. Nothing the driver writes throws out of here.
 */
import type { Logger } from 'pino';
import { closeFd } from '../../native/fd.ts';
import { Mapping } from '../../native/mapping.ts';
import { createMemfd } from '../../native/memfd.ts';
import { PciFunction, type BarHandler } from '../../transports/pci-device/function.ts';
import type { PciInterruptSink } from '../../transports/pci-device/virtio-pci.ts';
import type { PciEndpoint } from '../../transports/vfio-user/session.ts';
import type { GuestMemory } from '../../virtio/memory.ts';
import { type BarMemory, GuestBug, MemSlots } from './memslots.ts';
import { ReleaseRing } from './release-ring.ts';
import { QxlWorker, type CursorState } from './worker.ts';
import { type Surface, placeSurface, showIn } from './render.ts';
import { Framebuffer } from '../display/framebuffer.ts';
import { buildRom, ramLayout, ROM_SIZE, setClientMonitor, type RamLayout } from './rom.ts';
import {
  Bar,
  CLASS_DISPLAY_OTHER,
  COMMAND_RING_SIZE,
  COMMAND_SIZE,
  CURSOR_RING_SIZE,
  Interrupt,
  IO_BAR_SIZE,
  IoPort,
  MonitorsConfig,
  QXL_DEVICE_ID,
  QXL_REVISION,
  QXL_SUBSYSTEM_ID,
  QXL_SUBSYSTEM_VENDOR_ID,
  QXL_VENDOR_ID,
  Ram,
  RAM_MAGIC,
  RELEASE_RING_SIZE,
  RingHeader,
  type Rect,
  Rom,
  SurfaceCreate,
  SurfaceFormat,
} from './wire.ts';

export interface QxlOptions {
  /** RAM BAR (BAR 0) bytes: a power of two. */
  readonly ramSize: number;
  /** VRAM BAR (BAR 1) bytes: a power of two. */
  readonly vramSize: number;
  /** The display size the ROM offers the guest as its monitor. */
  readonly width: number;
  readonly height: number;
  /** PCI class code: display/other (a secondary card, the default) or display/VGA. */
  readonly classCode?: number;
  readonly log?: Logger;
}

/** Commands one drain takes from a ring before yielding to the event loop (a driver that never stops producing cannot starve the process). */
const COMMANDS_PER_DRAIN = 4 * COMMAND_RING_SIZE;
/**
 * Pixels one turn of the event loop draws (filled, copied, shown, read from bitmaps) before the
 * drain yields: one drawable may paint several large surfaces, so a ring full of them, or one of
 * them, would otherwise keep the process from its control plane and other devices for seconds.
 * A drawable larger than what is left of the budget is painted on in the next turns.
 */
export const PIXELS_PER_DRAIN = 4 * 1024 * 1024;
/**
 * Port writes that may wait behind a yielded drain. Linux waits for each write to complete
 * (it returns, or QXL_INTERRUPT_IO_CMD arrives) before the next, so it has at most one waiting.
 */
const MAX_WAITING_PORTS = 16;
/** Guest log lines (QXL_IO_LOG) and guest bugs logged at warn before the rest go to debug. */
const LOUD_LINES = 32;
const MAX_HEADS = 64;

export interface QxlCounters {
  commands: number;
  draws: number;
  fills: number;
  copies: number;
  unsupportedDraws: number;
  surfaceCommands: number;
  cursorCommands: number;
  releases: number;
  interrupts: number;
  guestBugs: number;
  /** Drains that used their budget and went on in a later turn of the event loop. */
  yieldedDrains: number;
}

export interface MonitorHead {
  readonly id: number;
  readonly surfaceId: number;
  readonly width: number;
  readonly height: number;
  readonly x: number;
  readonly y: number;
}

export interface QxlStatus {
  readonly primary: { readonly width: number; readonly height: number; readonly stride: number; readonly format: number } | null;
  readonly heads: readonly MonitorHead[];
  readonly cursor: { readonly visible: boolean; readonly x: number; readonly y: number; readonly width: number; readonly height: number } | null;
  /** Writes to each I/O port by name, since the device was made (which ports a driver uses). */
  readonly ports: Readonly<Record<string, number>>;
  /** The last guest bug since reset, if the device waits for a reset. */
  readonly guestBug: string | null;
  readonly counters: QxlCounters;
}

/** One BAR of shared memory: the memfd the client maps and this process's mapping of it. */
class SharedBar implements BarHandler, BarMemory {
  readonly sharedFd: number;
  private readonly mapping: Mapping;
  readonly bytes: Uint8Array;
  readonly view: DataView;

  constructor(
    readonly bar: number,
    readonly size: number,
    name: string,
  ) {
    // The client maps this descriptor too: sealed, it cannot shrink the memory under our mapping.
    this.sharedFd = createMemfd(name, size, { fixedSize: true });
    this.mapping = Mapping.shared(this.sharedFd, size);
    this.bytes = this.mapping.bytes;
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }

  read(offset: number, data: Uint8Array): void {
    data.set(this.bytes.subarray(offset, offset + data.length));
  }

  write(offset: number, data: Uint8Array): void {
    this.bytes.set(data, offset);
  }

  close(): void {
    this.mapping.unmap();
    closeFd(this.sharedFd);
  }
}

export class QxlDevice implements PciEndpoint {
  readonly name = 'qxl';
  readonly pci: PciFunction;
  readonly msixVectors = 0;
  readonly layout: RamLayout;
  readonly counters: QxlCounters = { commands: 0, draws: 0, fills: 0, copies: 0, unsupportedDraws: 0, surfaceCommands: 0, cursorCommands: 0, releases: 0, interrupts: 0, guestBugs: 0, yieldedDrains: 0 };
  private readonly ram: SharedBar;
  private readonly vram: SharedBar;
  private readonly rom: Uint8Array;
  private readonly slots: MemSlots;
  private readonly worker: QxlWorker;
  private readonly releaseRing: ReleaseRing;
  private readonly log: Logger | undefined;
  private sink: PciInterruptSink | undefined;
  private primary: Surface | undefined;
  /** What the primary surface shows, kept up to date as drawables land on it. */
  private display: Framebuffer | undefined;
  private heads: MonitorHead[] = [];
  private bug: string | undefined;
  private loudLines = 0;
  private readonly portWrites = new Map<string, number>();
  /** The next part of a drain that yielded, while one is due. */
  private continuation: NodeJS.Immediate | undefined;
  /** Port writes made while a drain was yielded, run in order once the rings are drained. */
  private waiting: { port: number; value: number }[] = [];
  /** Pixels drawn in this turn of the event loop (PIXELS_PER_DRAIN). */
  private work = 0;
  /** In catchUp(): a port it runs that drains again does not start another. */
  private catchingUp = false;
  private closed = false;

  constructor(options: QxlOptions) {
    this.log = options.log;
    this.layout = ramLayout(options.ramSize);
    this.ram = new SharedBar(Bar.RAM, options.ramSize, 'qxl-ram');
    this.vram = new SharedBar(Bar.VRAM, options.vramSize, 'qxl-vram');
    this.rom = buildRom(this.layout, options.width, options.height);
    this.releaseRing = new ReleaseRing(this.ram.view, this.layout.ramHeaderOffset + Ram.RELEASE_RING, () => this.raise(Interrupt.DISPLAY));
    this.slots = new MemSlots((start, end) => this.locate(start, end), () => this.rom[Rom.SLOT_GENERATION]);
    this.worker = new QxlWorker(this.slots, {
      primary: () => this.primary,
      counters: this.counters,
      release: (info) => {
        this.counters.releases++;
        this.releaseRing.release(info);
      },
      drawn: (id, areas) => {
        if (id === 0) for (const a of areas) this.show(a);
      },
    });
    const romBar: BarHandler = {
      size: ROM_SIZE,
      read: (offset, data) => data.set(this.rom.subarray(offset, offset + data.length)),
      // The ROM is the device's: writes are ignored, so the layout it promises stays true.
      write: () => {},
    };
    const ioBar: BarHandler = {
      size: IO_BAR_SIZE,
      io: true,
      read: (_offset, data) => data.fill(0xff),
      write: (offset, data) => this.ioWrite(offset, data[0]),
    };
    this.pci = new PciFunction({
      identity: {
        vendorId: QXL_VENDOR_ID,
        deviceId: QXL_DEVICE_ID,
        subsystemVendorId: QXL_SUBSYSTEM_VENDOR_ID,
        subsystemId: QXL_SUBSYSTEM_ID,
        revision: QXL_REVISION,
        classCode: options.classCode ?? CLASS_DISPLAY_OTHER,
      },
      bars: [this.ram, this.vram, romBar, ioBar],
      capabilities: [],
      interruptPin: 1,
      configWritten: () => this.intxChanged(),
    });
    this.resetState();
  }

  /** The RAM header as a view at its offset in the RAM BAR. */
  private get header(): number {
    return this.layout.ramHeaderOffset;
  }

  private u32(at: number): number {
    return this.ram.view.getUint32(this.header + at, true);
  }

  private setU32(at: number, value: number): void {
    this.ram.view.setUint32(this.header + at, value >>> 0, true);
  }

  // --- PciEndpoint ---

  attachInterrupts(sink: PciInterruptSink | undefined): void {
    this.sink = sink;
  }

  /** QXL reaches only its own BAR memory; guest RAM is not used. */
  useMemory(_memory: GuestMemory | undefined): void {}

  /** Function-level reset: the device as after QXL_IO_RESET, and configuration space. */
  reset(): void {
    this.resetState();
    this.pci.reset();
    this.intxChanged();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearImmediate(this.continuation);
    this.ram.close();
    this.vram.close();
  }

  // --- state ---

  /** QEMU's qxl_reset_state: no memslots, no surfaces, empty rings, interrupts clear. */
  private resetState(): void {
    clearImmediate(this.continuation);
    this.continuation = undefined;
    this.waiting = [];
    this.slots.clear();
    this.worker.reset();
    this.primary = undefined;
    this.heads = [];
    this.bug = undefined;
    this.releaseRing.reset();
    this.ram.bytes.fill(0, this.header, this.header + Ram.SIZE);
    this.setU32(Ram.MAGIC, RAM_MAGIC);
    for (const [at, items] of [
      [Ram.CMD_RING, COMMAND_RING_SIZE],
      [Ram.CURSOR_RING, CURSOR_RING_SIZE],
      [Ram.RELEASE_RING, RELEASE_RING_SIZE],
    ] as const) {
      this.setU32(at + RingHeader.NUM_ITEMS, items);
      // The first item produced is announced (the device asks to hear of a ring going non-empty).
      this.setU32(at + RingHeader.NOTIFY_ON_PROD, 1);
    }
    this.pci.setIntx(false);
  }

  /** Which BAR memory a memslot's guest-physical range lies in, from the BAR addresses the driver programmed. */
  private locate(start: number, end: number): { memory: BarMemory; offset: number } | undefined {
    for (const bar of [this.ram, this.vram]) {
      const base = this.pci.barAddress(bar.bar);
      if (base !== undefined && start >= base && end <= base + bar.size) return { memory: bar, offset: start - base };
    }
    return undefined;
  }

  // --- interrupts ---

  /** qxl_send_events: set `bits` pending and re-evaluate the line. */
  private raise(bits: number): void {
    this.setU32(Ram.INT_PENDING, this.u32(Ram.INT_PENDING) | bits);
    this.counters.interrupts++;
    this.updateIrq();
  }

  /** The line is the OR of the pending interrupts the driver unmasked. */
  private updateIrq(): void {
    this.pci.setIntx((this.u32(Ram.INT_PENDING) & this.u32(Ram.INT_MASK)) !== 0);
    this.intxChanged();
  }

  private intxChanged(): void {
    this.sink?.intx(this.pci.intxAsserted);
  }

  /** qxl_set_guest_bug: say why, raise ERROR, serve nothing but RESET until then. */
  private guestBug(reason: string): void {
    this.counters.guestBugs++;
    this.bug = reason;
    this.say('warn', { reason }, 'qxl guest bug: the device waits for a reset');
    this.raise(Interrupt.ERROR);
  }

  private say(level: 'warn' | 'info', fields: object, message: string): void {
    if (this.loudLines < LOUD_LINES) {
      this.loudLines++;
      this.log?.[level](fields, message);
    } else {
      this.log?.debug(fields, message);
    }
  }

  // --- I/O ports ---

  private ioWrite(port: number, value: number): void {
    const name = PORT_NAMES.get(port) ?? `port ${port}`;
    this.portWrites.set(name, (this.portWrites.get(name) ?? 0) + 1);
    if (this.bug !== undefined && port !== IoPort.RESET) return;
    if (this.continuation !== undefined && !UNORDERED_PORTS.has(port)) {
      // Commands the driver produced before this write are still to run: a notification is
      // already answered by the drain going on, anything else waits its turn behind them.
      if (NOTIFY_PORTS.has(port)) return;
      if (this.waiting.length >= MAX_WAITING_PORTS) this.guestBug(`${MAX_WAITING_PORTS} port writes wait for the rings to drain, and ${name} would be one more`);
      else this.waiting.push({ port, value });
      if (SYNCHRONOUS_PORTS.has(port)) this.catchUp();
      return;
    }
    this.work = 0;
    this.run(port, value);
  }

  private run(port: number, value: number): void {
    try {
      this.io(port, value);
    } catch (err) {
      if (!(err instanceof GuestBug)) throw err;
      this.guestBug(err.message);
    }
  }

  /**
   * Drain the rings before `port` does its part; false when the drain yielded (the write then
   * waits, first in line, and completes once the rings are empty) or hit a guest bug.
   */
  private drained(port: number, value: number): boolean {
    if (this.drain()) return true;
    if (this.bug === undefined) {
      this.waiting.unshift({ port, value });
      if (SYNCHRONOUS_PORTS.has(port)) this.catchUp();
    }
    return false;
  }

  /**
   * For a synchronous port write, which the driver takes as done when it returns: do now, before
   * returning, what a yielded drain left for later turns — the rest of a drawable, the commands in
   * the rings, then the port writes that waited behind them (this one among them), in order.
   * QEMU's qxl.c does the synchronous forms in the writing vCPU's thread the same way. Bounded: at
   * most COMMANDS_PER_DRAIN more commands (more than both rings hold), so a driver producing from
   * other vCPUs all along cannot hold the process here; past that the rest goes on in later turns
   * as before, and the write returns with its area as far as the device got.
   */
  private catchUp(): void {
    if (this.catchingUp) return;
    this.catchingUp = true;
    try {
      const limit = this.counters.commands + COMMANDS_PER_DRAIN;
      for (;;) {
        if (this.bug !== undefined || this.closed) return;
        this.work = 0;
        if (this.drain()) break;
        if (this.counters.commands >= limit && !this.worker.busy) return;
      }
      // The rings are empty: what the continuation would do next is done here instead.
      if (this.continuation !== undefined) clearImmediate(this.continuation);
      this.continuation = undefined;
      while (this.continuation === undefined && this.bug === undefined) {
        const next = this.waiting.shift();
        if (next === undefined) return;
        this.run(next.port, next.value);
      }
    } finally {
      this.catchingUp = false;
    }
  }

  private io(port: number, value: number): void {
    switch (port) {
      case IoPort.NOTIFY_CMD:
      case IoPort.NOTIFY_CURSOR:
      case IoPort.NOTIFY_OOM:
        this.drain();
        return;
      case IoPort.UPDATE_AREA:
        // Commands run as they are taken, so an area is up to date once the rings are drained;
        // the synchronous form does not return before (catchUp), the _ASYNC one interrupts then.
        if (!this.drain()) this.catchUp();
        return;
      case IoPort.UPDATE_IRQ:
        this.updateIrq();
        return;
      case IoPort.RESET:
        this.resetState();
        this.updateIrq();
        return;
      case IoPort.LOG:
        this.guestLog();
        return;
      case IoPort.MEMSLOT_ADD:
      case IoPort.MEMSLOT_ADD_ASYNC:
        this.slots.add(value, this.ram.view.getBigUint64(this.header + Ram.MEM_SLOT_START, true), this.ram.view.getBigUint64(this.header + Ram.MEM_SLOT_END, true));
        break;
      case IoPort.MEMSLOT_DEL:
        this.slots.delete(value);
        return;
      case IoPort.CREATE_PRIMARY:
      case IoPort.CREATE_PRIMARY_ASYNC:
      case IoPort.ATTACH_PRIMARY:
        this.createPrimary();
        break;
      case IoPort.DESTROY_PRIMARY:
      case IoPort.DESTROY_PRIMARY_ASYNC:
      case IoPort.DETACH_PRIMARY:
        if (!this.drained(port, value)) return;
        this.primary = undefined;
        break;
      case IoPort.DESTROY_SURFACE_WAIT:
      case IoPort.DESTROY_SURFACE_ASYNC:
        if (!this.drained(port, value)) return;
        this.worker.destroySurface(value);
        break;
      case IoPort.DESTROY_ALL_SURFACES:
      case IoPort.DESTROY_ALL_SURFACES_ASYNC:
        if (!this.drained(port, value)) return;
        this.worker.reset();
        this.primary = undefined;
        break;
      case IoPort.UPDATE_AREA_ASYNC:
      case IoPort.FLUSH_SURFACES_ASYNC:
        if (!this.drained(port, value)) return;
        break;
      case IoPort.FLUSH_RELEASE:
        this.releaseRing.push();
        return;
      case IoPort.MONITORS_CONFIG_ASYNC:
        this.readMonitorsConfig();
        break;
      default:
        throw new GuestBug(`I/O port ${port} is not a QXL port (SET_MODE is qxl-1's)`);
    }
    // The _ASYNC forms complete with QXL_INTERRUPT_IO_CMD; the others were done when the write returned.
    if (isAsync(port)) this.raise(Interrupt.IO_CMD);
  }

  /** QXL_IO_LOG: the NUL-terminated text in log_buf. */
  private guestLog(): void {
    const buf = this.ram.bytes.subarray(this.header + Ram.LOG_BUF, this.header + Ram.LOG_BUF + Ram.LOG_BUF_SIZE);
    const end = buf.indexOf(0);
    const text = Buffer.from(buf.subarray(0, end < 0 ? buf.length : end)).toString('latin1').trimEnd();
    this.say('info', { guest: text }, 'qxl guest log');
  }

  /** QXL_IO_CREATE_PRIMARY: the surface described in the RAM header's create_surface. */
  private createPrimary(): void {
    if (this.primary !== undefined) throw new GuestBug('CREATE_PRIMARY while a primary surface exists');
    const at = this.header + Ram.CREATE_SURFACE;
    const v = this.ram.view;
    const format = v.getUint32(at + SurfaceCreate.FORMAT, true);
    if (format !== SurfaceFormat.X_RGB_32 && format !== SurfaceFormat.A_RGB_32) throw new GuestBug(`primary surface format ${format} is not supported (32-bit xRGB and ARGB are)`);
    const type = v.getUint32(at + SurfaceCreate.TYPE, true);
    if (type !== 0) throw new GuestBug(`create_surface type ${type} is not QXL_SURF_TYPE_PRIMARY`);
    const primary = placeSurface(
      this.slots,
      v.getBigUint64(at + SurfaceCreate.MEM, true),
      v.getUint32(at + SurfaceCreate.WIDTH, true),
      v.getUint32(at + SurfaceCreate.HEIGHT, true),
      v.getInt32(at + SurfaceCreate.STRIDE, true),
      format,
      'primary surface',
    );
    this.primary = primary;
    if (this.display?.width !== primary.width || this.display.height !== primary.height) this.display = new Framebuffer(primary.width, primary.height);
    // QXL_SURF_FLAG_KEEP_DATA or not, the memory is what the surface shows now.
    this.show({ top: 0, left: 0, bottom: primary.height, right: primary.width });
  }

  /** Copy `area` of the primary surface into the framebuffer and, when it was drawn, tell its viewers. */
  private show(area: Rect, drawn = true): void {
    if (this.primary === undefined || this.display === undefined) return;
    showIn(this.display, this.primary, area);
    if (drawn) this.display.markDirty({ x: area.left, y: area.top, width: area.right - area.left, height: area.bottom - area.top });
  }

  /** QXL_IO_MONITORS_CONFIG_ASYNC: the heads the driver shows, from ram.monitors_config. */
  private readMonitorsConfig(): void {
    const address = this.ram.view.getBigUint64(this.header + Ram.MONITORS_CONFIG, true);
    const head = this.slots.span(address, MonitorsConfig.HEADS, 'monitors config');
    const count = head.view.getUint16(head.offset + MonitorsConfig.COUNT, true);
    if (count > MAX_HEADS) throw new GuestBug(`monitors config has ${count} heads, more than ${MAX_HEADS}`);
    const all = this.slots.span(address, MonitorsConfig.HEADS + count * MonitorsConfig.HEAD_SIZE, 'monitors config');
    this.heads = Array.from({ length: count }, (_, i) => {
      const h = all.offset + MonitorsConfig.HEADS + i * MonitorsConfig.HEAD_SIZE;
      const u = (k: number): number => all.view.getUint32(h + 4 * k, true);
      return { id: u(0), surfaceId: u(1), width: u(2), height: u(3), x: u(4), y: u(5) };
    });
  }

  // --- rings ---

  /**
   * Take and run the commands of the command and cursor rings (Linux announces both on
   * NOTIFY_CMD). A ring found empty asks for a notification of its next command
   * (notify_on_prod), then is looked at once more, so a command produced meanwhile is not missed.
   * True when both rings are empty; false when the drain yielded (it goes on in a later turn of
   * the event loop) or the device hit a guest bug.
   */
  private drain(): boolean {
    // A drawable left half-painted comes before any command after it.
    this.work += this.worker.resume(PIXELS_PER_DRAIN - this.work);
    if (this.worker.busy) {
      this.scheduleDrain();
      return false;
    }
    for (const [at, interrupt] of [
      [Ram.CMD_RING, Interrupt.DISPLAY],
      [Ram.CURSOR_RING, Interrupt.CURSOR],
    ] as const) {
      if (!this.drainRing(at, interrupt)) return false;
    }
    return true;
  }

  /** Run a ring's commands; true once it is empty, false when the drain yielded or hit a guest bug. */
  private drainRing(ring: number, interrupt: number): boolean {
    const items = ring === Ram.CMD_RING ? COMMAND_RING_SIZE : CURSOR_RING_SIZE;
    for (let taken = 0; ; ) {
      const prod = this.u32(ring + RingHeader.PROD);
      let cons = this.u32(ring + RingHeader.CONS);
      if (prod === cons) {
        this.setU32(ring + RingHeader.NOTIFY_ON_PROD, cons + 1);
        if (this.u32(ring + RingHeader.PROD) === cons) return true;
        continue;
      }
      if (((prod - cons) >>> 0) > items) {
        this.guestBug(`ring at 0x${ring.toString(16)} has prod ${prod} and cons ${cons}, more than its ${items} items apart`);
        return false;
      }
      if (taken >= COMMANDS_PER_DRAIN || this.work >= PIXELS_PER_DRAIN) {
        this.scheduleDrain();
        return false;
      }
      const item = this.header + ring + RingHeader.SIZE + (cons % items) * COMMAND_SIZE;
      const data = this.ram.view.getBigUint64(item, true);
      const type = this.ram.view.getUint32(item + 8, true);
      cons = (cons + 1) >>> 0;
      this.setU32(ring + RingHeader.CONS, cons);
      taken++;
      this.counters.commands++;
      // A driver waiting for room asked to hear when the device consumed up to notify_on_cons.
      if (cons === this.u32(ring + RingHeader.NOTIFY_ON_CONS)) this.raise(interrupt);
      try {
        this.work += this.worker.execute(type, data, PIXELS_PER_DRAIN - this.work);
      } catch (err) {
        if (!(err instanceof GuestBug)) throw err;
        this.guestBug(err.message);
        return false;
      }
      if (this.worker.busy) {
        this.scheduleDrain();
        return false;
      }
    }
  }

  /** Go on draining in the next turn of the event loop; once the rings are empty, the port writes that waited run in order. */
  private scheduleDrain(): void {
    this.counters.yieldedDrains++;
    this.continuation ??= setImmediate(() => {
      this.continuation = undefined;
      if (this.closed || this.bug !== undefined) return;
      this.work = 0;
      if (!this.drain()) return;
      while (this.continuation === undefined && this.bug === undefined) {
        const next = this.waiting.shift();
        if (next === undefined) return;
        this.run(next.port, next.value);
      }
    });
  }

  // --- what the host sees and changes ---

  /**
   * The host's monitor becomes `width`×`height`: the ROM's client monitors configuration changes
   * and QXL_INTERRUPT_CLIENT_MONITORS_CONFIG tells the driver, which offers it as the preferred
   * mode. A size the surface 0 area cannot hold is an Error of one sentence.
   */
  setMonitor(width: number, height: number): void {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 64 || height < 64 || width > 8192 || height > 8192) {
      throw new RangeError(`a monitor of ${width}x${height} is not between 64x64 and 8192x8192`);
    }
    if (width * height * 4 > this.layout.surface0AreaSize) throw new RangeError(`a ${width}x${height} monitor does not fit the ${this.layout.surface0AreaSize}-byte surface 0 area (raise --ram-size)`);
    setClientMonitor(this.rom, width, height);
    if (this.bug === undefined) this.raise(Interrupt.CLIENT_MONITORS_CONFIG);
  }

  /** The bytes of the RAM or VRAM BAR, as the guest maps them. */
  barBytes(bar: typeof Bar.RAM | typeof Bar.VRAM): Uint8Array {
    return bar === Bar.RAM ? this.ram.bytes : this.vram.bytes;
  }

  /**
   * The framebuffer of the primary surface, refreshed from guest memory (a driver may also write
   * the surface directly), or undefined while there is no primary surface.
   */
  framebuffer(): Framebuffer | undefined {
    const p = this.primary;
    if (p === undefined) return undefined;
    this.show({ top: 0, left: 0, bottom: p.height, right: p.width }, false);
    return this.display;
  }

  status(): QxlStatus {
    const p = this.primary;
    const c: CursorState | undefined = this.worker.cursor;
    return {
      primary: p === undefined ? null : { width: p.width, height: p.height, stride: p.stride, format: p.format },
      heads: this.heads,
      cursor: c === undefined ? null : { visible: c.visible, x: c.x, y: c.y, width: c.width, height: c.height },
      ports: Object.fromEntries(this.portWrites),
      guestBug: this.bug ?? null,
      counters: { ...this.counters },
    };
  }
}

/** Ports that act at once even while a drain is yielded: they neither read the rings nor depend on what the commands do. */
const UNORDERED_PORTS: ReadonlySet<number> = new Set([IoPort.RESET, IoPort.UPDATE_IRQ, IoPort.LOG, IoPort.FLUSH_RELEASE]);
/** Ports that only ask for the rings to be drained. */
const NOTIFY_PORTS: ReadonlySet<number> = new Set([IoPort.NOTIFY_CMD, IoPort.NOTIFY_CURSOR, IoPort.NOTIFY_OOM]);
/**
 * Synchronous forms whose effect depends on the commands before them being done: done before the
 * write returns (catchUp), where their _ASYNC forms wait for the rings and then interrupt.
 */
const SYNCHRONOUS_PORTS: ReadonlySet<number> = new Set([
  IoPort.UPDATE_AREA,
  IoPort.DESTROY_PRIMARY,
  IoPort.DETACH_PRIMARY,
  IoPort.DESTROY_SURFACE_WAIT,
  IoPort.DESTROY_ALL_SURFACES,
]);

const PORT_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(IoPort).filter(([name]) => name !== 'COUNT').map(([name, port]) => [port, name]));

/** The qxl-3 and qxl-4 ports that complete with QXL_INTERRUPT_IO_CMD. */
function isAsync(port: number): boolean {
  return (port >= IoPort.UPDATE_AREA_ASYNC && port <= IoPort.FLUSH_SURFACES_ASYNC) || port === IoPort.MONITORS_CONFIG_ASYNC;
}
