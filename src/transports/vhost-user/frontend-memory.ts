/**
 * Guest RAM of a vhost-user front-end: one memfd, mapped shared here and handed to the back-end
 * with SET_MEM_TABLE, so both sides see the same bytes. The driver's rings and request buffers
 * are allocated from it (DmaPool), which is what makes them visible to the device.
 *
 * Address scheme. vhost-user names memory twice ("Memory region description"): descriptors
 * carry guest-physical addresses, SET_VRING_ADDR carries the front-end's user addresses, and
 * the region description ties the two together. Here guest-physical addresses start at
 * GUEST_BASE (so 0 is never a valid buffer address) and user addresses are guest addresses
 * plus USER_OFFSET. Neither is a real pointer of this process: the protocol only requires the
 * two to be consistent with the table, and keeping them apart means a back-end that confuses
 * them fails at once instead of by luck.
 */
import { closeFd } from '../../native/fd.ts';
import { Mapping, PAGE_SIZE } from '../../native/mapping.ts';
import { createMemfd } from '../../native/memfd.ts';
import { DmaPool } from '../../virtio/dma.ts';
import { GuestMemory } from '../../virtio/memory.ts';
import type { MemoryRegionDescription } from './payloads.ts';

/** First guest-physical address of the RAM region. */
export const GUEST_BASE = 0x4000_0000;
/** User address minus guest-physical address, for SET_VRING_ADDR and the region description. */
export const USER_OFFSET = 0x7f00_0000_0000;
/** Largest RAM a front-end allocates (the number must stay well inside 2^53, see memory.ts). */
export const MAX_MEMORY_SIZE = 2 ** 40;

export class FrontendMemory {
  readonly memory: GuestMemory;
  readonly dma: DmaPool;
  #released = false;

  private constructor(
    /** The memfd behind the RAM, sent with SET_MEM_TABLE; owned here. */
    readonly fd: number,
    private readonly mapping: Mapping,
  ) {
    this.memory = new GuestMemory([{ guestAddr: GUEST_BASE, bytes: mapping.bytes }]);
    this.dma = new DmaPool(this.memory, GUEST_BASE, mapping.size);
  }

  /** `size` bytes (a positive multiple of the page size) of zeroed shared RAM. */
  static allocate(size: number): FrontendMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0 || size > MAX_MEMORY_SIZE) {
      throw new RangeError(`guest memory size ${size} is not a positive multiple of ${PAGE_SIZE} up to ${MAX_MEMORY_SIZE}`);
    }
    const fd = createMemfd('paravirt-guest-ram', size);
    try {
      return new FrontendMemory(fd, Mapping.shared(fd, size));
    } catch (err) {
      closeFd(fd);
      throw err;
    }
  }

  get size(): number {
    return this.mapping.size;
  }

  /** The region as SET_MEM_TABLE describes it: the whole memfd from offset 0. */
  get region(): MemoryRegionDescription {
    return { guestAddr: BigInt(GUEST_BASE), size: BigInt(this.size), userAddr: BigInt(GUEST_BASE + USER_OFFSET), mmapOffset: 0n };
  }

  /** The user address of a guest-physical address inside the region. */
  userAddress(guestAddr: number): bigint {
    return BigInt(guestAddr) + BigInt(USER_OFFSET);
  }

  /** Unmap the RAM (views that escaped see scratch pages, see mapping.ts) and close the memfd. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.mapping.unmap();
    closeFd(this.fd);
  }
}
