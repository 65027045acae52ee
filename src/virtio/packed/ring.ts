/**
 * What the device and driver halves of a packed virtqueue (§2.8) share: the layout of its three
 * areas, typed views onto them resolved once per queue, the wrap-counter arithmetic and the
 * event suppression structure (§2.8.10, §2.8.14).
 *
 * Ring positions. Each side keeps a position in the ring and a wrap counter that starts at 1 and
 * flips each time the position passes the end (§2.8.1). For comparisons across laps a position
 * and its wrap counter fold into one "extended" index in [0, 2*size): pos while the counter is 1,
 * pos + size while it is 0. Consecutive laps then count up modulo 2*size, and between two checks
 * neither side moves by more than `size` descriptors (no more than `size` are ever outstanding),
 * so differences modulo 2*size are exact.
 */
import { DESC_SIZE, DescFlag, MAX_QUEUE_SIZE } from '../constants.ts';
import type { GuestMemory } from '../memory.ts';
import { type QueueConfig, VirtqueueError } from '../queue.ts';

/** One area of the ring: its size in bytes and the alignment its guest address needs. */
export interface RingArea {
  readonly size: number;
  readonly align: number;
}

/** The three areas of a packed virtqueue of `size` entries (§2.8.10.1 "Structure Size and Alignment"). */
export interface PackedRingLayout {
  /** Descriptor ring: QueueConfig.desc. */
  readonly desc: RingArea;
  /** Driver event suppression structure: QueueConfig.driver. */
  readonly driver: RingArea;
  /** Device event suppression structure: QueueConfig.device. */
  readonly device: RingArea;
}

const EVENT_SUPPRESSION: RingArea = { size: 4, align: 4 };

export function packedRingLayout(size: number): PackedRingLayout {
  const problem = sizeProblem(size);
  if (problem !== undefined) throw new RangeError(`packed ring: ${problem}`);
  return { desc: { size: DESC_SIZE * size, align: 16 }, driver: EVENT_SUPPRESSION, device: EVENT_SUPPRESSION };
}

/** §2.8.10 Descriptor Ring Change Event Flags. */
export const RingEventFlags = {
  ENABLE: 0,
  DISABLE: 1,
  /** Only with VIRTIO_F_EVENT_IDX: notify when the ring reaches the offset and wrap counter given. */
  DESC: 2,
} as const;

/**
 * The ring base (vhost-user VRING_BASE encoding, see DeviceQueue.base) of a queue nobody has used:
 * positions 0, both wrap counters 1 (§2.8.1), as QEMU reports for a fresh packed ring. A base of
 * 0 is NOT fresh: it is position 0 of the second lap (both counters 0).
 */
export const PACKED_FRESH_BASE = 0x8000_8000;

// A local copy: the helpers below run per chain, where reading an import can cost a getter call.
const { AVAIL, USED } = DescFlag;

/** The AVAIL/USED bits of a descriptor's flags (§2.8.1). */
export const AVAIL_USED = AVAIL | USED;

/** AVAIL/USED bits of a descriptor made available by a driver whose wrap counter is `wrap`. */
export function availablePattern(wrap: boolean): number {
  return wrap ? AVAIL : USED;
}

/** AVAIL/USED bits of a descriptor used by a device whose wrap counter is `wrap`. */
export function usedPattern(wrap: boolean): number {
  return wrap ? AVAIL_USED : 0;
}

/**
 * Whether a plain read of a descriptor's flags that shows the state a side waits for (made
 * available, for the device; used, for the driver) already orders the reads of the rest of the
 * descriptor after it, as the acquire of §2.8.21 requires, so the per-chain `Atomics.load` (a
 * builtin call in V8, about a hundred instructions, where a plain read is one) can be skipped:
 *
 * - The value is this lap's, never a stale one: a thread never reads a location older than its
 *   own last write to it (cache coherence), and this side's last write to the flags was the
 *   pattern of the previous lap; seeing the awaited pattern means the other side wrote it since.
 * - x86 and x86-64 do not reorder a load with later loads (Intel SDM vol. 3A §9.2.2, AMD64 APM
 *   vol. 2 §7.2), and the other side wrote the flags after the descriptor (its release store,
 *   §2.8.21; x86 does not reorder stores either), so the later plain reads see the descriptor.
 * - V8 keeps typed-array loads in program order (they are on its effect chain; TurboFan schedules
 *   no instructions on x86), and a read that does not show the awaited pattern is made again with
 *   `Atomics.load`, a call the compiler cannot see through: an optimised polling loop cannot
 *   keep an old read of the flags or of a descriptor read before it.
 *
 * Elsewhere (arm64, ppc64, s390x, riscv64 ...) loads may be reordered, and every flags read that
 * ends a wait is an `Atomics.load`.
 */
export const PLAIN_READ_ACQUIRES = process.arch === 'x64' || process.arch === 'ia32';

export function extendedIndex(pos: number, wrap: boolean, size: number): number {
  return wrap ? pos : pos + size;
}

/** The off_wrap half of an event suppression structure naming position `pos` with wrap counter `wrap`. */
export function offWrap(pos: number, wrap: boolean): number {
  return wrap ? pos | 0x8000 : pos;
}

/**
 * The event suppression structure as one 32-bit word: off_wrap in the low half, flags in the
 * high half (little-endian struct pvirtq_event_suppress, §2.8.14). Reading and writing it whole
 * keeps the two fields from tearing.
 */
export function eventWord(flags: number, offWrapValue = 0): number {
  return (flags << 16) | offWrapValue;
}

/**
 * Whether a side that moved from extended index `oldExt` to `newExt` since it last checked must
 * notify the other side, whose event suppression structure reads `word` (§2.8.10). DESC mode asks
 * for a notification once the ring passes the descriptor at off_wrap, i.e. when that descriptor's
 * extended index lies in [oldExt, newExt): the packed form of vring_need_event(). DESC without
 * EVENT_IDX and the reserved value 3 are not valid suppression requests, so they notify: a spare
 * notification is harmless, a lost one stalls the queue.
 */
export function needsNotification(word: number, eventIdx: boolean, oldExt: number, newExt: number, size: number): boolean {
  const flags = (word >>> 16) & 3;
  if (flags === RingEventFlags.DISABLE) return false;
  if (flags !== RingEventFlags.DESC || !eventIdx) return true;
  const span = 2 * size;
  const event = extendedIndex(word & 0x7fff, (word & 0x8000) !== 0, size);
  const distance = (((event - oldExt) % span) + span) % span;
  return distance < (newExt - oldExt + span) % span;
}

/** Zero-copy typed views of one queue's three areas; little-endian host assumed (checked in mapPackedRing). */
export interface PackedRingViews {
  /** Descriptor i: [4i] addr low, [4i+1] addr high, [4i+2] len, [4i+3] id | flags << 16. */
  readonly words: Uint32Array;
  /** Descriptor i: [8i+6] id, [8i+7] flags (the field read and written with acquire/release ordering). */
  readonly halves: Uint16Array;
  /** Driver event suppression structure, one word (see eventWord). */
  readonly driverEvent: Uint32Array;
  /** Device event suppression structure, one word. */
  readonly deviceEvent: Uint32Array;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function sizeProblem(size: number): string | undefined {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE
    ? undefined
    : `queue size ${size} is not an integer in 1..${MAX_QUEUE_SIZE}`;
}

/**
 * Check a driver's queue configuration (§2.8.10.1: size 1..32768, alignment, each area inside one
 * guest memory region) and map its areas. The addresses come from the driver, so a bad one is a
 * VirtqueueError; a host whose backing bytes cannot carry aligned typed views gets a RangeError.
 */
export function mapPackedRing(memory: GuestMemory, config: QueueConfig, name: string): PackedRingViews {
  if (!LITTLE_ENDIAN) throw new RangeError(`${name}: packed rings need a little-endian host`);
  const { size } = config;
  const problem = sizeProblem(size);
  if (problem !== undefined) throw new VirtqueueError('bad queue size', `${name}: ${problem}`);
  const layout = packedRingLayout(size);
  const desc = area(memory, name, 'descriptor ring', config.desc, layout.desc);
  const driver = area(memory, name, 'driver event suppression structure', config.driver, layout.driver);
  const device = area(memory, name, 'device event suppression structure', config.device, layout.device);
  return {
    words: new Uint32Array(desc.buffer, desc.byteOffset, size * 4),
    halves: new Uint16Array(desc.buffer, desc.byteOffset, size * 8),
    driverEvent: new Uint32Array(driver.buffer, driver.byteOffset, 1),
    deviceEvent: new Uint32Array(device.buffer, device.byteOffset, 1),
  };
}

/** Whether descriptor `pos`, made available in the lap of wrap counter `wrap`, has since been used (see ring.ts packedSlotUsed). */
export function slotUsedSince(views: PackedRingViews, pos: number, wrap: boolean): boolean {
  return (Atomics.load(views.halves, pos * 8 + 7) & AVAIL_USED) !== availablePattern(wrap);
}

function area(memory: GuestMemory, name: string, what: string, addr: number, layout: RingArea): Uint8Array {
  if (!Number.isSafeInteger(addr) || addr % layout.align !== 0) {
    throw new VirtqueueError('misaligned ring', `${name}: ${what} at ${hex(addr)} is not ${layout.align}-byte aligned`);
  }
  const bytes = memory.trySlice(addr, layout.size);
  if (bytes === undefined) {
    throw new VirtqueueError(
      'ring outside guest memory',
      `${name}: ${what} (${layout.size} bytes at ${hex(addr)}) is not inside one guest memory region`,
    );
  }
  if (bytes.byteOffset % 4 !== 0) {
    throw new RangeError(`${name}: host memory backing the ${what} at ${hex(addr)} is not 4-byte aligned`);
  }
  return bytes;
}

export function hex(n: number): string {
  return Number.isFinite(n) ? `0x${n.toString(16)}` : String(n);
}
