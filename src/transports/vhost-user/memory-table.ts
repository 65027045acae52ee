/**
 * The back-end's view of guest RAM under vhost-user ("Memory access" in vhost-user.rst): the
 * front-end shares each RAM region as a file descriptor and describes it by three coordinates,
 * its guest-physical address, its size and the address the front-end itself maps it at (the
 * "user address"). Descriptors in the rings carry guest-physical addresses; SET_VRING_ADDR carries
 * user addresses. The table keeps both so either can be translated, and refuses any layout where
 * a byte would have two meanings.
 *
 * Everything here comes from the front-end and is hostile until checked: sizes, overlaps, counts
 * and the fd itself.
 */
import { constants as bufferConstants } from 'node:buffer';
import { ADDRESS_LIMIT, GuestMemory, type MemoryRegion } from '../../virtio/memory.ts';

/** One region as a front-end describes it (SET_MEM_TABLE entry or ADD/REM_MEM_REG payload). */
export interface RegionDescription {
  readonly guestAddr: bigint;
  readonly size: bigint;
  readonly userAddr: bigint;
  readonly mmapOffset: bigint;
}

/** Host bytes of one region's fd mapped into this process. */
export interface RegionMapping {
  readonly bytes: Uint8Array;
  /** Release the mapping; every view of `bytes` becomes invalid. */
  unmap(): void;
  /** Free the file's memory behind [offset, offset+length) of `bytes` (MemoryRegion.discard). */
  discard?(offset: number, length: number): void;
}

/** Maps `size` bytes of `fd` starting at byte `offset` (any offset: alignment is the mapper's business). */
export type MapRegion = (fd: number, offset: number, size: number) => RegionMapping;

/** A region layout the front-end must not send; the message names the rule broken. */
export class MemoryTableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MemoryTableError';
  }
}

/**
 * The most regions a back-end accepts through ADD_MEM_REG (GET_MAX_MEM_SLOTS). Each region is
 * one mapping; 509 is what KVM allows a VM, so no real guest layout exceeds it.
 */
export const MAX_MEM_SLOTS = 509;

/**
 * The largest mapping one view can cover: JavaScript cannot index bytes beyond its maximum
 * buffer length (4 GiB on Node 20), and asking for a larger view aborts the process. A bigger
 * region is mapped as pieces split at guest-physical multiples of this size. A buffer that
 * crossed such a line would be refused as straddling two regions; Linux never builds one,
 * since its block layer splits segments at 4 GiB boundaries (the default segment boundary).
 */
export const MAX_MAPPING: number = Math.min(bufferConstants.MAX_LENGTH, 2 ** 32);

/**
 * The most guest RAM a table may map in total (16 TiB, above what any QEMU machine offers). Each
 * mapping reserves address space until its views are collected, so a front-end describing
 * absurd sizes would otherwise exhaust the process's address space before mmap refused.
 */
export const MAX_TOTAL_SIZE = 2 ** 44;

interface Region {
  readonly guestAddr: number;
  readonly userAddr: number;
  readonly size: number;
  /** The region's pieces in guest-physical order, each one mapping. */
  readonly pieces: readonly { readonly guestAddr: number; readonly mapping: RegionMapping }[];
}

/** A bigint coordinate as an exact number below 2^53, or a MemoryTableError naming `what`. */
function exact(value: bigint, what: string): number {
  if (value < 0n || value >= BigInt(ADDRESS_LIMIT)) {
    throw new MemoryTableError(`${what} 0x${value.toString(16)} is beyond 2^53`);
  }
  return Number(value);
}

/** Checks a description and converts it: positive size, both ranges ending at or below 2^53. */
function coordinates(d: RegionDescription): { guestAddr: number; userAddr: number; size: number; offset: number } {
  const size = exact(d.size, 'region size');
  if (size === 0) throw new MemoryTableError('a memory region has size 0');
  const guestAddr = exact(d.guestAddr, 'region guest address');
  const userAddr = exact(d.userAddr, 'region user address');
  const offset = exact(d.mmapOffset, 'region mmap offset');
  if (guestAddr + size > ADDRESS_LIMIT || userAddr + size > ADDRESS_LIMIT || offset + size > ADDRESS_LIMIT) {
    throw new MemoryTableError(`region of 0x${size.toString(16)} bytes at 0x${guestAddr.toString(16)} wraps past 2^53`);
  }
  return { guestAddr, userAddr, size, offset };
}

function checkTotal(bytes: number): void {
  if (bytes > MAX_TOTAL_SIZE) {
    throw new MemoryTableError(`${bytes} bytes of guest memory exceed the ${MAX_TOTAL_SIZE}-byte limit of one table`);
  }
}

function overlaps(aStart: number, aSize: number, bStart: number, bSize: number): boolean {
  return aStart < bStart + bSize && bStart < aStart + aSize;
}

export class MemoryTable {
  private regions: Region[] = [];
  private guest: GuestMemory | undefined;

  constructor(
    private readonly map: MapRegion,
    /** Largest single mapping; tests shrink it to exercise the splitting. */
    private readonly maxMapping: number = MAX_MAPPING,
  ) {}

  get regionCount(): number {
    return this.regions.length;
  }

  /** Guest RAM as GuestMemory (guest-physical addresses), or undefined while no region is mapped. */
  get memory(): GuestMemory | undefined {
    return this.guest;
  }

  /**
   * Replace the whole table (SET_MEM_TABLE). `fds[i]` backs `descriptions[i]`. Either every
   * region is validated and mapped and the table replaced, or nothing changes. Returns the
   * mappings the new table no longer uses: the caller unmaps them once no request can still
   * be holding a view into them.
   */
  replace(descriptions: readonly RegionDescription[], fds: readonly number[]): RegionMapping[] {
    if (descriptions.length !== fds.length) {
      throw new MemoryTableError(`${descriptions.length} regions arrived with ${fds.length} file descriptors`);
    }
    const coords = descriptions.map(coordinates);
    checkTotal(coords.reduce((n, c) => n + c.size, 0));
    for (let i = 0; i < coords.length; i++) {
      for (let j = 0; j < i; j++) this.checkDisjoint(coords[i], coords[j]);
    }
    const fresh = this.mapAll(coords, fds);
    const old = this.regions.flatMap(mappingsOf);
    this.install(fresh);
    return old;
  }

  /** Add one region (ADD_MEM_REG); validated against every region already present. */
  add(description: RegionDescription, fd: number): void {
    if (this.regions.length >= MAX_MEM_SLOTS) {
      throw new MemoryTableError(`the table already holds the maximum of ${MAX_MEM_SLOTS} regions`);
    }
    const c = coordinates(description);
    checkTotal(this.regions.reduce((n, r) => n + r.size, c.size));
    for (const r of this.regions) this.checkDisjoint(c, r);
    this.install([...this.regions, ...this.mapAll([c], [fd])]);
  }

  /**
   * Remove the region matching guest address, user address and size (REM_MEM_REG; the mmap
   * offset is ignored per the spec). Returns its mappings for the caller to unmap when safe.
   */
  remove(description: RegionDescription): RegionMapping[] {
    const c = coordinates(description);
    const at = this.regions.findIndex(
      (r) => r.guestAddr === c.guestAddr && r.userAddr === c.userAddr && r.size === c.size,
    );
    if (at < 0) {
      throw new MemoryTableError(`no region of 0x${c.size.toString(16)} bytes at guest 0x${c.guestAddr.toString(16)} to remove`);
    }
    const [gone] = this.regions.splice(at, 1);
    this.install(this.regions);
    return mappingsOf(gone);
  }

  /** Forget every region; returns the mappings for the caller to unmap when safe. */
  clear(): RegionMapping[] {
    const old = this.regions.flatMap(mappingsOf);
    this.install([]);
    return old;
  }

  /**
   * The guest-physical address of front-end user address `userAddr`, provided all of
   * [userAddr, userAddr+len) lies in one region; undefined otherwise.
   */
  userToGuest(userAddr: bigint, len: number): number | undefined {
    if (userAddr < 0n || userAddr >= BigInt(ADDRESS_LIMIT)) return undefined;
    const u = Number(userAddr);
    for (const r of this.regions) {
      if (u >= r.userAddr && u < r.userAddr + r.size && len <= r.userAddr + r.size - u) {
        return r.guestAddr + (u - r.userAddr);
      }
    }
    return undefined;
  }

  private checkDisjoint(
    a: { guestAddr: number; userAddr: number; size: number },
    b: { guestAddr: number; userAddr: number; size: number },
  ): void {
    if (overlaps(a.guestAddr, a.size, b.guestAddr, b.size)) {
      throw new MemoryTableError(`regions overlap in guest-physical space at 0x${a.guestAddr.toString(16)}`);
    }
    // A user address inside two regions would translate ring addresses ambiguously.
    if (overlaps(a.userAddr, a.size, b.userAddr, b.size)) {
      throw new MemoryTableError(`regions overlap in front-end address space at 0x${a.userAddr.toString(16)}`);
    }
  }

  /** Map every region or none: a failure part-way unmaps what was already mapped. */
  private mapAll(
    coords: readonly { guestAddr: number; userAddr: number; size: number; offset: number }[],
    fds: readonly number[],
  ): Region[] {
    const done: Region[] = [];
    try {
      coords.forEach((c, i) => {
        const pieces: { guestAddr: number; mapping: RegionMapping }[] = [];
        done.push({ guestAddr: c.guestAddr, userAddr: c.userAddr, size: c.size, pieces });
        const end = c.guestAddr + c.size;
        for (let at = c.guestAddr; at < end; ) {
          // Pieces end at guest-physical multiples of maxMapping (see MAX_MAPPING).
          const next = Math.min(end, (Math.floor(at / this.maxMapping) + 1) * this.maxMapping);
          pieces.push({ guestAddr: at, mapping: this.map(fds[i], c.offset + (at - c.guestAddr), next - at) });
          at = next;
        }
      });
    } catch (err) {
      for (const m of done.flatMap(mappingsOf)) m.unmap();
      throw new MemoryTableError(`cannot map a memory region: ${(err as Error).message}`);
    }
    return done;
  }

  private install(regions: Region[]): void {
    this.regions = regions;
    const pieces: MemoryRegion[] = regions.flatMap((r) =>
      r.pieces.map((p) => ({ guestAddr: p.guestAddr, bytes: p.mapping.bytes, discard: p.mapping.discard?.bind(p.mapping) })),
    );
    this.guest = pieces.length === 0 ? undefined : new GuestMemory(pieces);
  }
}

function mappingsOf(r: Region): RegionMapping[] {
  return r.pieces.map((p) => p.mapping);
}
