/**
 * QXL memory slots: every pointer a QXL driver hands the device (a command's data, a drawable's
 * image, a chunk's next) is a QXLPHYSICAL whose high bits name a slot and its generation and
 * whose low bits are an offset into that slot. A slot is a range of the device's own BAR memory
 * the driver registered with MEMSLOT_ADD (qxl_dev.h; QEMU's qxl_add_memslot and
 * qxl_get_check_slot_offset). Resolving a pointer is checked like a virtqueue descriptor: the
 * slot exists and is active, the generation matches, and the whole range lies inside the slot
 * (hence inside the BAR); anything else is the driver's bug, a GuestBug.
 */

/** A driver error the device cannot go on from: QEMU's qxl_set_guest_bug. */
export class GuestBug extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestBug';
  }
}

/** Slot layout the ROM advertises (QEMU's): 8 generation bits and 8 slot bits at the top. */
export const SLOT_GEN_BITS = 8;
export const SLOT_ID_BITS = 8;
export const NUM_MEMSLOTS = 8;
/** The first slot a driver uses (rom.slots_start); 0 is QEMU's own. */
export const SLOTS_START = 1;
const OFFSET_BITS = 64 - SLOT_GEN_BITS - SLOT_ID_BITS;
const OFFSET_MASK = (1n << BigInt(OFFSET_BITS)) - 1n;

/** Bytes of one BAR's memory, by BAR index. */
export interface BarMemory {
  readonly bar: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
}

/** Where a memslot's guest-physical range lies: which BAR memory, from which offset. */
export type LocateRange = (start: number, end: number) => { readonly memory: BarMemory; readonly offset: number } | undefined;

interface Slot {
  readonly memory: BarMemory;
  /** Offset of the slot's first byte in the BAR. */
  readonly base: number;
  readonly size: number;
  readonly generation: number;
}

/** A resolved range: bytes [offset, offset+length) of `bytes`, all inside one slot. */
export interface Span {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly offset: number;
  readonly length: number;
}

export class MemSlots {
  private readonly slots: (Slot | undefined)[] = new Array<Slot | undefined>(NUM_MEMSLOTS).fill(undefined);

  constructor(
    private readonly locate: LocateRange,
    /** The generation new slots get (rom.slot_generation). */
    private readonly generation: () => number,
  ) {}

  /** MEMSLOT_ADD: slot `id` covers guest-physical [start, end), which must lie inside one BAR. */
  add(id: number, start: bigint, end: bigint): void {
    if (id >= NUM_MEMSLOTS) throw new GuestBug(`memslot ${id} is beyond the ${NUM_MEMSLOTS} slots`);
    if (this.slots[id] !== undefined) throw new GuestBug(`memslot ${id} is already active`);
    if (end < start || end > BigInt(Number.MAX_SAFE_INTEGER)) throw new GuestBug(`memslot ${id} range 0x${start.toString(16)}..0x${end.toString(16)} is invalid`);
    const place = this.locate(Number(start), Number(end));
    if (place === undefined) throw new GuestBug(`memslot ${id} range 0x${start.toString(16)}..0x${end.toString(16)} is not inside a RAM or VRAM BAR`);
    this.slots[id] = { memory: place.memory, base: place.offset, size: Number(end - start), generation: this.generation() };
  }

  delete(id: number): void {
    if (id >= NUM_MEMSLOTS) throw new GuestBug(`memslot ${id} is beyond the ${NUM_MEMSLOTS} slots`);
    this.slots[id] = undefined;
  }

  clear(): void {
    this.slots.fill(undefined);
  }

  /** `length` bytes at QXLPHYSICAL `address`, or a GuestBug saying why not. */
  span(address: bigint, length: number, what: string): Span {
    const id = Number(address >> BigInt(OFFSET_BITS + SLOT_GEN_BITS)) & ((1 << SLOT_ID_BITS) - 1);
    const generation = Number((address >> BigInt(OFFSET_BITS)) & BigInt((1 << SLOT_GEN_BITS) - 1));
    const offset = Number(address & OFFSET_MASK);
    const slot = id < NUM_MEMSLOTS ? this.slots[id] : undefined;
    if (slot === undefined) throw new GuestBug(`${what} at 0x${address.toString(16)} names memslot ${id}, which is not active`);
    if (generation !== slot.generation) throw new GuestBug(`${what} at 0x${address.toString(16)} has generation ${generation}, memslot ${id} has ${slot.generation}`);
    if (!Number.isSafeInteger(length) || length < 0 || offset > slot.size || length > slot.size - offset) {
      throw new GuestBug(`${what} of ${length} bytes at offset 0x${offset.toString(16)} of memslot ${id} is outside its ${slot.size} bytes`);
    }
    return { bytes: slot.memory.bytes, view: slot.memory.view, offset: slot.base + offset, length };
  }
}
