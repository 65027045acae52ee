/**
 * The host's clocks, read with clock_gettime(2) as nanoseconds since each clock's epoch. The
 * virtio-rtc device serves them; bigint because a Unix time in nanoseconds (about 2^61) is past
 * what a double holds exactly.
 */
import { declare } from './libc.ts';
import { SyscallError, lastErrno } from './syscall-error.ts';

const clockGettime = declare<(clock: number, ts: Uint8Array) => number>('int clock_gettime(int clockid, _Out_ uint8_t *ts)');

/** clockid_t values of <linux/time.h>. */
export const HostClock = {
  /** UTC as the kernel keeps it: steps back at a positive leap second. */
  REALTIME: 0,
  MONOTONIC: 1,
  /** MONOTONIC plus the time the host spent suspended: physical time elapsed since boot. */
  BOOTTIME: 7,
  /** REALTIME plus the kernel's TAI offset, which is 0 until something (an NTP daemon) sets it. */
  TAI: 11,
} as const;
export type HostClockId = (typeof HostClock)[keyof typeof HostClock];

/** struct timespec on 64-bit Linux: tv_sec and tv_nsec, two longs. */
const cell = new Uint8Array(16);
const view = new DataView(cell.buffer);

/** Clock `id` now, in nanoseconds since its epoch. */
export function readHostClock(id: HostClockId): bigint {
  if (clockGettime(id, cell) !== 0) throw new SyscallError('clock_gettime', lastErrno(), `reading clock ${id}`);
  return view.getBigInt64(0, true) * 1_000_000_000n + view.getBigInt64(8, true);
}
