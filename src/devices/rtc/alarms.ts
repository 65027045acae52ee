/**
 * One alarm per clock ("Alarm Operation"): an alarm time, enabled or not, and the detection of
 * expiration events, which is the device's job alone. An alarm expires
 *
 * - when its clock reaches or passes the alarm time while it is enabled,
 * - when the driver sets a time already reached while enabling it (SET_ALARM),
 * - when the driver enables it and the time is already reached (SET_ALARM_ENABLED).
 *
 * Once expired it does not expire again until the clock goes back before the alarm time (a
 * step backwards re-arms it) or the driver sets it again. The clock is checked by a timer aimed
 * at the alarm time and never longer than CHECK_MS away, so a UTC or TAI clock the host steps
 * past the alarm time is noticed within that. Alarms are not kept across a device reset: time 0,
 * disabled, as the spec requires of a device that does not retain them.
 *
 * The waiting is an AlarmTimer: a real timer unless the host drives time itself (a test, the
 * fuzzer), so that nothing of an alarm has to run on the event loop's clock.
 */
import type { RtcClock } from './clocks.ts';

/** Longest wait between two looks at a clock with an enabled alarm, in milliseconds. */
export const CHECK_MS = 1000;

/** How an alarm waits before it looks at its clock again. */
export interface AlarmTimer {
  /** Call `look` in about `ms` milliseconds; the function returned cancels that. */
  after(ms: number, look: () => void): () => void;
}

export const REAL_TIMER: AlarmTimer = {
  after(ms, look) {
    const timer = setTimeout(look, ms);
    return () => clearTimeout(timer);
  },
};

export interface AlarmState {
  readonly time: bigint;
  readonly enabled: boolean;
}

export class Alarm implements AlarmState {
  time = 0n;
  enabled = false;
  /** The clock was at or past `time` at the last look: the expiration was served. */
  private reached = false;
  private cancel: (() => void) | undefined;

  constructor(
    private readonly clock: RtcClock,
    /** An expiration event: the device notifies the driver. */
    private readonly expire: () => void,
    private readonly timer: AlarmTimer = REAL_TIMER,
  ) {}

  /** SET_ALARM. */
  set(time: bigint, enabled: boolean): void {
    this.time = time;
    this.setEnabled(enabled);
  }

  /** SET_ALARM_ENABLED (and the second half of SET_ALARM). */
  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.reached = false;
    this.check();
  }

  /** Device reset: back to time 0, disabled, no timer. */
  clear(): void {
    this.time = 0n;
    this.enabled = false;
    this.reached = false;
    this.stopTimer();
  }

  private check(): void {
    this.stopTimer();
    if (!this.enabled) return;
    const now = this.clock.read();
    if (now >= this.time) {
      if (!this.reached) {
        this.reached = true;
        this.expire();
      }
    } else {
      this.reached = false;
    }
    // Keep looking while enabled: a clock stepping backwards re-arms an expired alarm.
    const delayMs = this.reached ? BigInt(CHECK_MS) : this.clock.hostDelay(now, this.time) / 1_000_000n + 1n;
    this.cancel = this.timer.after(Number(delayMs < BigInt(CHECK_MS) ? delayMs : BigInt(CHECK_MS)), () => this.check());
  }

  private stopTimer(): void {
    this.cancel?.();
    this.cancel = undefined;
  }
}
