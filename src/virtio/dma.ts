/**
 * A DmaAllocator over one range of guest memory: first fit over a sorted free list, with
 * neighbouring free blocks merged on free. Drivers allocate rings once and request buffers per
 * request; both are few enough that a list is the simple right answer.
 */
import type { DmaAllocator } from './driver.ts';
import type { GuestMemory } from './memory.ts';

interface Block {
  start: number;
  end: number;
}

export class DmaPool implements DmaAllocator {
  /** Free blocks, sorted by address, never adjacent (merged on free). */
  private readonly freeList: Block[];
  /** Allocated address → end of its block, so free() needs only the address. */
  private readonly used = new Map<number, number>();

  constructor(memory: GuestMemory, base: number, size: number) {
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`DMA pool size ${size} is not a positive integer`);
    if (!memory.contains(base, size)) {
      throw new RangeError(`DMA pool of ${size} bytes at 0x${base.toString(16)} is not inside one guest memory region`);
    }
    this.freeList = [{ start: base, end: base + size }];
  }

  /** Bytes not allocated (possibly fragmented). */
  get freeBytes(): number {
    return this.freeList.reduce((n, b) => n + b.end - b.start, 0);
  }

  alloc(bytes: number, align: number): number | undefined {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new RangeError(`DMA allocation size ${bytes} is not a positive integer`);
    if (!Number.isSafeInteger(align) || align <= 0 || (align & (align - 1)) !== 0 || align > 2 ** 30) {
      throw new RangeError(`DMA alignment ${align} is not a power of two`);
    }
    for (let i = 0; i < this.freeList.length; i++) {
      const b = this.freeList[i];
      const start = Math.ceil(b.start / align) * align;
      const end = start + bytes;
      if (end > b.end) continue;
      // Keep the alignment gap before and the rest after as free blocks.
      const rest: Block[] = [];
      if (start > b.start) rest.push({ start: b.start, end: start });
      if (end < b.end) rest.push({ start: end, end: b.end });
      this.freeList.splice(i, 1, ...rest);
      this.used.set(start, end);
      return start;
    }
    return undefined;
  }

  free(addr: number): void {
    const end = this.used.get(addr);
    if (end === undefined) throw new RangeError(`DMA free of 0x${addr.toString(16)}, which is not an allocated address`);
    this.used.delete(addr);
    let i = this.freeList.findIndex((b) => b.start > addr);
    if (i < 0) i = this.freeList.length;
    const block: Block = { start: addr, end };
    const prev = this.freeList[i - 1];
    const next = this.freeList[i];
    if (next !== undefined && next.start === block.end) {
      block.end = next.end;
      this.freeList.splice(i, 1);
    }
    if (prev !== undefined && prev.end === block.start) prev.end = block.end;
    else this.freeList.splice(i, 0, block);
  }
}
