/**
 * A driver that does whatever a scenario says: it sets the device up through the real virtio-mmio
 * register file, writes descriptors, ring indices, flags and indirect tables straight into guest
 * memory, and can also submit a well-formed request at the exact place the device will look next,
 * to check that the device still serves after the garbage.
 *
 * It keeps only a loose model of the ring (where it would publish next); where its own garbage
 * may have confused that model it asks the device where it stands (DeviceQueue.base), which a
 * test may do and a real driver could not.
 */
import { MmioDevice } from '../../src/transports/mmio/device.ts';
import { MmioReg } from '../../src/transports/mmio/registers.ts';
import { DescFlag, DeviceStatus, Feature, featureBit } from '../../src/virtio/constants.ts';
import type { GuestMemory } from '../../src/virtio/memory.ts';
import type { QueueAddresses } from '../../src/virtio/queue.ts';
import { ringLayout, type RingLayout } from '../../src/virtio/ring.ts';
import { AVAIL_USED, availablePattern, usedPattern } from '../../src/virtio/packed/ring.ts';
import { placeRingAreas } from '../../src/virtio/split/layout.ts';
import { DATA_BASE, RING_BASE } from './guarded-memory.ts';
import {
  type AddrChoice,
  INIT_STEPS,
  type InitStep,
  type Publish,
  type RawDesc,
  TABLE_AREA_OFFSET,
  TABLE_SLOT_BYTES,
  type Target,
  profileNamed,
} from './scenario.ts';

/** A broken promise of the device: the fuzz case fails with this message. */
export class Finding extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Finding';
  }
}

const U32 = 0x1_0000_0000;
const { NEXT, INDIRECT, AVAIL, USED } = DescFlag;
const RING_FEATURES = [Feature.RING_PACKED, Feature.EVENT_IDX, Feature.INDIRECT_DESC, Feature.IN_ORDER].reduce(
  (m, bit) => m | featureBit(bit),
  0n,
);
/** The four AVAIL/USED combinations a lying packed driver may write (§2.8.1). */
const FLAG_PATTERNS = [0, AVAIL, USED, AVAIL_USED];

/** Make a chain available the way the rules say: its head in the next avail entry, or AVAIL/USED for the lap. */
export const HONEST: Publish = { entry: undefined, advance: 1, lie: undefined };

/** Where the driver's well-formed requests keep their indirect table (beyond any ring). */
const VALID_TABLE = RING_BASE + 0x4000;

/** The guest address a scenario's address choice names. */
function resolve(addr: AddrChoice): number {
  switch (addr.kind) {
    case 'data':
      return DATA_BASE + addr.offset;
    case 'table':
      return tableAddress(addr.index);
    case 'ring':
      return RING_BASE + addr.offset;
    case 'raw':
      return addr.hi * U32 + addr.lo;
  }
}

export function tableAddress(index: number): number {
  return DATA_BASE + TABLE_AREA_OFFSET + index * TABLE_SLOT_BYTES;
}

/** One descriptor as the driver writes it: the same 16 bytes on split and packed rings (§2.7.5, §2.8.13). */
export interface DescWords {
  readonly addr: number;
  readonly len: number;
  readonly flags: number;
  /** Split: next. Packed: id. */
  readonly idOrNext: number;
}

export class HostileDriver {
  readonly features: bigint;
  readonly areas: QueueAddresses;
  readonly layout: RingLayout;
  readonly size: number;
  /** The queue this driver sets up and attacks; the device's others stay disabled. */
  readonly queue: number;
  /** Split: the avail->idx this driver last wrote. */
  private availIdx = 0;
  /** Packed: where this driver would make its next descriptor available, and its wrap counter. */
  private pos = 0;
  private wrap = true;

  constructor(
    readonly target: Target,
    private readonly regs: MmioDevice,
    private readonly mem: GuestMemory,
  ) {
    const offered = regs.state.offeredFeatures;
    const wanted =
      (target.packed ? featureBit(Feature.RING_PACKED) : 0n) |
      (target.eventIdx ? featureBit(Feature.EVENT_IDX) : 0n) |
      (target.indirect ? featureBit(Feature.INDIRECT_DESC) : 0n) |
      (target.inOrder ? featureBit(Feature.IN_ORDER) : 0n);
    // Every device-specific bit the device offers (so more request types are live), plus the chosen ring features.
    const profile = profileNamed(target.profile);
    this.features = (offered & ~RING_FEATURES & ~(profile.withheldFeatures ?? 0n)) | (wanted & offered);
    this.size = target.queueSize;
    this.queue = profile.queue;
    this.layout = ringLayout(this.size, target.packed);
    this.areas = placeRingAreas(this.layout, RING_BASE);
  }

  // --- registers ---

  read(offset: number): number {
    return this.regs.read(offset, 4);
  }

  write(offset: number, value: number): void {
    this.regs.write(offset, 4, value);
  }

  writeRaw(offset: number, width: 1 | 2 | 4, value: number): void {
    this.regs.write(offset, width, value);
  }

  get status(): number {
    return this.read(MmioReg.STATUS);
  }

  notify(queue = this.queue): void {
    this.write(MmioReg.QUEUE_NOTIFY, queue);
  }

  /** One step of the virtio-mmio set-up sequence (§4.2.3.1, §4.2.3.2). */
  initStep(step: InitStep): void {
    switch (step) {
      case 'reset':
        this.write(MmioReg.STATUS, 0);
        break;
      case 'acknowledge':
        this.write(MmioReg.STATUS, this.status | DeviceStatus.ACKNOWLEDGE);
        break;
      case 'driver':
        this.write(MmioReg.STATUS, this.status | DeviceStatus.DRIVER);
        break;
      case 'features':
        this.write(MmioReg.DRIVER_FEATURES_SEL, 0);
        this.write(MmioReg.DRIVER_FEATURES, Number(this.features & 0xffff_ffffn));
        this.write(MmioReg.DRIVER_FEATURES_SEL, 1);
        this.write(MmioReg.DRIVER_FEATURES, Number(this.features >> 32n));
        break;
      case 'featuresOk':
        this.write(MmioReg.STATUS, this.status | DeviceStatus.FEATURES_OK);
        break;
      case 'queueSize':
        this.write(MmioReg.QUEUE_SEL, this.queue);
        this.write(MmioReg.QUEUE_SIZE, this.size);
        break;
      case 'queueAreas':
        this.write(MmioReg.QUEUE_SEL, this.queue);
        this.writeAddress(MmioReg.QUEUE_DESC_LOW, this.areas.desc);
        this.writeAddress(MmioReg.QUEUE_DRIVER_LOW, this.areas.driver);
        this.writeAddress(MmioReg.QUEUE_DEVICE_LOW, this.areas.device);
        break;
      case 'queueReady':
        this.write(MmioReg.QUEUE_SEL, this.queue);
        this.write(MmioReg.QUEUE_READY, 1);
        break;
      case 'driverOk':
        this.write(MmioReg.STATUS, this.status | DeviceStatus.DRIVER_OK);
        break;
    }
  }

  private writeAddress(low: number, addr: number): void {
    this.write(low, addr % U32);
    this.write(low + 4, Math.floor(addr / U32));
  }

  /** Reset and set up properly with zeroed rings (§4.2.3.2 step 4); throws a Finding if the device refuses. */
  init(): void {
    this.initStep('reset');
    this.mem.slice(RING_BASE, this.areasEnd() - RING_BASE).fill(0);
    this.availIdx = 0;
    this.pos = 0;
    this.wrap = true;
    for (const step of INIT_STEPS) {
      this.initStep(step);
      if (step === 'featuresOk' && (this.status & DeviceStatus.FEATURES_OK) === 0) {
        throw new Finding('the device refused FEATURES_OK for a subset of its own offer');
      }
    }
    if (!this.running()) throw new Finding(`a clean set-up left the device with status 0x${this.status.toString(16)}`);
  }

  private areasEnd(): number {
    return this.areas.device + this.layout.device.size;
  }

  /**
   * Whether the device runs the attacked queue as this driver configured it, so a well-formed request placed
   * where the device looks next must complete. Garbage register writes can reconfigure the queue;
   * then only a reset brings back a known state.
   */
  running(): boolean {
    const s = this.regs.state;
    const status = s.status;
    return (
      (status & DeviceStatus.DRIVER_OK) !== 0 &&
      (status & DeviceStatus.DEVICE_NEEDS_RESET) === 0 &&
      s.liveQueue(this.queue) !== undefined &&
      s.queueSize(this.queue) === this.size &&
      s.queueArea(this.queue, 'desc') === this.areas.desc &&
      s.queueArea(this.queue, 'driver') === this.areas.driver &&
      s.queueArea(this.queue, 'device') === this.areas.device &&
      s.driverFeatures === this.features
    );
  }

  get needsReset(): boolean {
    return (this.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }

  /** Take the device's ring position as this driver's own (after a request placed there). */
  resync(): void {
    const q = this.regs.state.liveQueue(this.queue);
    if (q === undefined) return;
    if (this.target.packed) {
      this.pos = q.base & 0x7fff;
      this.wrap = (q.base & 0x8000) !== 0;
    } else {
      this.availIdx = q.base;
    }
  }

  /** The device's ring position (DeviceQueue.base), undefined without a live queue. */
  get position(): number | undefined {
    return this.regs.state.liveQueue(this.queue)?.base;
  }

  /**
   * Whether the device would find a chain available where it looks next: split, avail->idx ahead
   * of its position; packed, the descriptor there flagged available for its wrap counter (§2.8.1).
   */
  hasAvailable(): boolean {
    const q = this.regs.state.liveQueue(this.queue);
    if (q === undefined) return false;
    if (!this.target.packed) return this.mem.readU16(this.areas.driver + 2) !== (q.base & 0xffff);
    const flags = this.mem.readU16(this.areas.desc + (q.base & 0x7fff) * 16 + 14);
    return (flags & AVAIL_USED) === availablePattern((q.base & 0x8000) !== 0);
  }

  // --- ring memory ---

  /** Write descriptor `slot` of the table (split) or ring (packed), 16 bytes at any slot number. */
  writeDesc(slot: number, d: DescWords, flagsLast = false): void {
    this.writeDescAt(this.areas.desc + (slot % this.size) * 16, d, flagsLast);
  }

  /** One descriptor in the layout of this ring type; indirect tables use it too (§2.7.5.3, §2.8.7). */
  private writeDescAt(at: number, d: DescWords, skipFlags: boolean): void {
    this.mem.writeU32(at, d.addr % U32);
    this.mem.writeU32(at + 4, Math.floor(d.addr / U32) >>> 0);
    this.mem.writeU32(at + 8, d.len >>> 0);
    const [flagsAt, otherAt] = this.target.packed ? [14, 12] : [12, 14];
    this.mem.writeU16(at + otherAt, d.idOrNext & 0xffff);
    if (!skipFlags) this.mem.writeU16(at + flagsAt, d.flags & 0xffff);
  }

  private writePackedFlags(slot: number, flags: number): void {
    this.mem.writeU16(this.areas.desc + (slot % this.size) * 16 + 14, flags & 0xffff);
  }

  /**
   * Write a chain of raw descriptors and make it available. Split: at table slots from `start`,
   * next fields as given, then the avail ring entry and index as `publish` says. Packed: at the
   * driver's position, AVAIL/USED bits set for each slot's lap (or the lie), the head's flags last.
   */
  chain(start: number, descs: readonly DescWords[], publish: Publish): void {
    if (this.target.packed) {
      let pos = this.pos;
      let wrap = this.wrap;
      const headFlags: number[] = [];
      for (const d of descs) {
        const pattern = publish.lie === undefined ? availablePattern(wrap) : FLAG_PATTERNS[publish.lie];
        const flags = (d.flags & ~AVAIL_USED) | pattern;
        this.writeDesc(pos, { ...d, flags }, pos === this.pos);
        if (pos === this.pos) headFlags.push(flags);
        if (++pos === this.size) {
          pos = 0;
          wrap = !wrap;
        }
      }
      // The head (written first above but flagged last) becomes available after the rest (§2.8.21).
      this.writePackedFlags(this.pos, headFlags[headFlags.length - 1]);
      this.pos = pos;
      this.wrap = wrap;
      return;
    }
    descs.forEach((d, i) => this.writeDesc(start + i, d));
    const mask = this.size - 1;
    const avail = this.areas.driver;
    this.mem.writeU16(avail + 4 + 2 * (this.availIdx & mask), publish.entry ?? start % this.size);
    this.availIdx = (this.availIdx + publish.advance) & 0xffff;
    this.mem.writeU16(avail + 2, this.availIdx);
  }

  /** A raw scenario descriptor as words. */
  static words(d: RawDesc): DescWords {
    return { addr: resolve(d.addr), len: d.len, flags: d.flags, idOrNext: d.next };
  }

  /** Write a table of raw descriptors at `addr` (as much of it as lies in guest memory). */
  writeTable(addr: number, entries: readonly DescWords[]): void {
    entries.forEach((e, i) => {
      if (this.mem.contains(addr + i * 16, 16)) this.writeDescAt(addr + i * 16, e, false);
    });
  }

  /** Raw bytes into one of the queue's areas, at `offset` modulo the area's size, clipped to its end. */
  scribble(area: keyof QueueAddresses, offset: number, bytes: Uint8Array): void {
    const size = this.layout[area].size;
    const at = offset % size;
    this.mem.write(this.areas[area] + at, bytes.subarray(0, size - at));
  }

  /**
   * Place a chain of well-formed descriptors where the device will look next (from its own ring
   * position) and publish it with id/head 0; the device must have nothing in flight. Returns how
   * to recognise its completion.
   */
  placeValid(descs: readonly DescWords[], useIndirect: boolean): () => { id: number; len: number } | undefined {
    const q = this.regs.state.liveQueue(this.queue);
    if (q === undefined) throw new Finding('placeValid without a live queue');
    const ringDescs: DescWords[] = useIndirect
      ? [{ addr: VALID_TABLE, len: descs.length * 16, flags: INDIRECT, idOrNext: 0 }]
      : descs.map((d, i) => ({ ...d, flags: d.flags | (i + 1 < descs.length ? NEXT : 0), idOrNext: this.target.packed ? 0 : i + 1 }));
    if (useIndirect) {
      this.writeTable(
        VALID_TABLE,
        descs.map((d, i) => ({ ...d, flags: d.flags | (i + 1 < descs.length ? NEXT : 0), idOrNext: i + 1 })),
      );
    }
    if (this.target.packed) return this.placePacked(q.base, ringDescs);
    return this.placeSplit(q.base, ringDescs);
  }

  private placeSplit(base: number, descs: readonly DescWords[]): () => { id: number; len: number } | undefined {
    descs.forEach((d, i) => this.writeDesc(i, d));
    const mask = this.size - 1;
    const used = this.areas.device;
    // Poison every used element, so that only what the device writes now can match.
    this.mem.slice(used + 4, 8 * this.size).fill(0xff);
    this.availIdx = base;
    this.chainPublished(0);
    return () => {
      const idx = this.mem.readU16(used + 2);
      const e = used + 4 + 8 * ((idx - 1) & mask);
      const id = this.mem.readU32(e);
      return id === 0xffff_ffff ? undefined : { id, len: this.mem.readU32(e + 4) };
    };
  }

  private chainPublished(head: number): void {
    const avail = this.areas.driver;
    this.mem.writeU16(avail + 4 + 2 * (this.availIdx & (this.size - 1)), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.mem.writeU16(avail + 2, this.availIdx);
  }

  private placePacked(base: number, descs: readonly DescWords[]): () => { id: number; len: number } | undefined {
    this.pos = base & 0x7fff;
    this.wrap = (base & 0x8000) !== 0;
    const usedPos = (base >>> 16) & 0x7fff;
    const usedWrap = base >>> 31 === 1;
    const head = this.pos;
    this.chain(head, descs, HONEST);
    // What follows the chain must not look available, as in a ring a tidy driver keeps (§2.8.1).
    if (descs.length < this.size) this.writePackedFlags(this.pos, usedPattern(!this.wrap));
    const at = this.areas.desc + usedPos * 16;
    return () => {
      const flags = this.mem.readU16(at + 14);
      if ((flags & AVAIL_USED) !== usedPattern(usedWrap)) return undefined;
      return { id: this.mem.readU16(at + 12), len: this.mem.readU32(at + 8) };
    };
  }
}
