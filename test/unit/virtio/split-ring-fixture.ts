/**
 * A split ring in a fresh guest memory, with raw accessors to write descriptors and ring fields
 * by hand, as a (possibly misbehaving) driver or device would.
 */
import { GuestMemory } from '../../../src/virtio/memory.ts';
import type { QueueConfig } from '../../../src/virtio/queue.ts';
import { placeSplitRing } from '../../../src/virtio/split-ring.ts';

/** Guest memory: the ring at RING, buffers from DATA, MEMORY_BYTES in all, one region at 0. */
export const RING = 0x1000;
export const DATA = 0x40000;
export const MEMORY_BYTES = 0x80000;

export interface Features {
  readonly eventIdx?: boolean;
  readonly indirect?: boolean;
  readonly inOrder?: boolean;
}

export class RawRing {
  readonly memory = GuestMemory.allocate(MEMORY_BYTES);
  readonly config: QueueConfig;

  constructor(
    readonly size: number,
    features: Features = {},
  ) {
    this.config = {
      ...placeSplitRing(RING, size),
      size,
      eventIdx: features.eventIdx ?? false,
      indirect: features.indirect ?? false,
      inOrder: features.inOrder ?? false,
    };
  }

  /** Write descriptor `i` of the table at `table` (the ring's own table by default). */
  writeDesc(i: number, addr: number, len: number, flags: number, next = 0, table = this.config.desc): void {
    const at = table + 16 * i;
    this.memory.writeU64(at, BigInt(addr));
    this.memory.writeU32(at + 8, len);
    this.memory.writeU16(at + 12, flags);
    this.memory.writeU16(at + 14, next);
  }

  /** Put `heads` in the available ring from index `from`, then set avail->idx past them. */
  makeAvailable(heads: readonly number[], from = this.availIdx): void {
    heads.forEach((h, k) => this.memory.writeU16(this.config.driver + 4 + 2 * ((from + k) % this.size), h));
    this.availIdx = (from + heads.length) & 0xffff;
  }

  get availIdx(): number {
    return this.memory.readU16(this.config.driver + 2);
  }
  set availIdx(v: number) {
    this.memory.writeU16(this.config.driver + 2, v);
  }
  get availFlags(): number {
    return this.memory.readU16(this.config.driver);
  }
  set availFlags(v: number) {
    this.memory.writeU16(this.config.driver, v);
  }
  get usedEvent(): number {
    return this.memory.readU16(this.config.driver + 4 + 2 * this.size);
  }
  set usedEvent(v: number) {
    this.memory.writeU16(this.config.driver + 4 + 2 * this.size, v);
  }
  get usedIdx(): number {
    return this.memory.readU16(this.config.device + 2);
  }
  set usedIdx(v: number) {
    this.memory.writeU16(this.config.device + 2, v);
  }
  get usedFlags(): number {
    return this.memory.readU16(this.config.device);
  }
  set usedFlags(v: number) {
    this.memory.writeU16(this.config.device, v);
  }
  get availEvent(): number {
    return this.memory.readU16(this.config.device + 4 + 8 * this.size);
  }
  set availEvent(v: number) {
    this.memory.writeU16(this.config.device + 4 + 8 * this.size, v);
  }

  /** The used element at ring index `i` (taken modulo the size). */
  usedElem(i: number): { id: number; len: number } {
    const at = this.config.device + 4 + 8 * (i % this.size);
    return { id: this.memory.readU32(at), len: this.memory.readU32(at + 4) };
  }

  writeUsedElem(i: number, id: number, len: number): void {
    const at = this.config.device + 4 + 8 * (i % this.size);
    this.memory.writeU32(at, id);
    this.memory.writeU32(at + 4, len);
  }

  /** Fill [addr, addr+len) with bytes derived from `seed`, and return them. */
  fill(addr: number, len: number, seed: number): Uint8Array {
    const bytes = Uint8Array.from({ length: len }, (_, k) => (seed * 31 + k * 7) & 0xff);
    this.memory.write(addr, bytes);
    return bytes;
  }
}

/** Concatenate views (a chain's readable or writable part) into one array. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Words of the doorbell array two threads share: notification counters and a stop flag. */
export const Doorbell = {
  /** Available buffer notifications (driver to device). */
  KICK: 0,
  /** Used buffer notifications (device to driver). */
  INTERRUPT: 1,
  STOP: 2,
} as const;

/** Send a notification: count it and wake a thread waiting on the word. */
export function ring(doorbells: Int32Array, which: number): void {
  Atomics.add(doorbells, which, 1);
  Atomics.notify(doorbells, which);
}

/** What split-ring-echo-device.ts is started with. */
export interface EchoDeviceData {
  readonly memory: SharedArrayBuffer;
  readonly doorbells: SharedArrayBuffer;
  readonly config: QueueConfig;
}
