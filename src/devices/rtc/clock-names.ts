/** The clocks `paravirt serve rtc --clocks` names (clocks.ts says what each one is). */
export const CLOCK_NAMES = ['utc', 'tai', 'monotonic', 'utc-smeared'] as const;
export type ClockName = (typeof CLOCK_NAMES)[number];

export function isClockName(v: unknown): v is ClockName {
  return typeof v === 'string' && (CLOCK_NAMES as readonly string[]).includes(v);
}
