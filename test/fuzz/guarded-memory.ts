/**
 * Guest memory with canaries around it, and a step counter inside it.
 *
 * The guest regions are carved out of one host ArrayBuffer with guard bytes before, between and
 * after them. A device (or driver) that reached one byte outside guest memory (a typed-array view
 * or subarray computed past a region) would land in a guard, so `firstDamagedGuard()` finding one
 * is exactly "the device touched memory outside guest RAM".
 *
 * The device gets a CountingMemory: every translation it asks for (each descriptor and indirect
 * table goes through trySlice) counts one step, and a driver action that costs more steps than
 * its budget is recorded and stopped. A ring walk that never ends therefore becomes a finding
 * instead of a hung process, with no timer involved.
 */
import { GuestMemory, type MemoryRegion } from '../../src/virtio/memory.ts';

/** Guest-physical layout: a ring region and a data region with unmapped space between them. */
export const RING_BASE = 0x1_0000;
export const RING_BYTES = 0x8000;
export const DATA_BASE = 0x4_0000;
export const DATA_BYTES = 0x4000;
const GUARD_BYTES = 0x1000;
const CANARY = 0xa5;

/** A driver action exceeded its step budget; thrown inside the device, recorded by the memory. */
export class StepBudgetExceeded extends Error {
  constructor(budget: number) {
    super(`more than ${budget} guest memory translations for one driver action`);
    this.name = 'StepBudgetExceeded';
  }
}

export class CountingMemory extends GuestMemory {
  private steps = 0;
  private budget = Infinity;
  /** The most steps any action took, and whether one ran over its budget. */
  maxSteps = 0;
  overrun: StepBudgetExceeded | undefined;

  /** Start counting one driver action, which may take at most `budget` steps. */
  startAction(budget: number): void {
    this.steps = 0;
    this.budget = budget;
  }

  override trySlice(addr: number, len: number): Uint8Array | undefined {
    if (++this.steps > this.maxSteps) this.maxSteps = this.steps;
    if (this.steps > this.budget) {
      this.overrun ??= new StepBudgetExceeded(this.budget);
      throw this.overrun;
    }
    return super.trySlice(addr, len);
  }
}

/** One guest memory region to lay out: its guest-physical address and size. */
export interface RegionSpec {
  readonly base: number;
  readonly bytes: number;
}

/** The device fuzzer's layout: the ring region and the data region. */
const RING_AND_DATA: readonly RegionSpec[] = [
  { base: RING_BASE, bytes: RING_BYTES },
  { base: DATA_BASE, bytes: DATA_BYTES },
];

export class GuardedMemory {
  private readonly host: Uint8Array;
  private readonly guards: readonly (readonly [number, number])[];
  /** What the device sees. */
  readonly device: CountingMemory;
  /** The same bytes for the driver's own writes, which count no steps. */
  readonly driver: GuestMemory;

  /** Regions in `layout`, each with guard bytes before and after it. */
  constructor(layout: readonly RegionSpec[] = RING_AND_DATA) {
    const guards: [number, number][] = [];
    const regions: MemoryRegion[] = [];
    let at = GUARD_BYTES;
    guards.push([0, at]);
    const starts = layout.map((r) => {
      const start = at;
      at += r.bytes;
      guards.push([at, at + GUARD_BYTES]);
      at += GUARD_BYTES;
      return start;
    });
    this.host = new Uint8Array(at);
    this.guards = guards;
    for (const [from, to] of this.guards) this.host.fill(CANARY, from, to);
    layout.forEach((r, i) => regions.push({ guestAddr: r.base, bytes: this.host.subarray(starts[i], starts[i] + r.bytes) }));
    this.device = new CountingMemory(regions);
    this.driver = new GuestMemory(regions);
  }

  /** The first guard byte that changed, as a host offset, or undefined when all are intact. */
  firstDamagedGuard(): number | undefined {
    for (const [from, to] of this.guards) {
      for (let i = from; i < to; i++) if (this.host[i] !== CANARY) return i;
    }
    return undefined;
  }
}
