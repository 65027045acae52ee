import type { BenchMessage } from './run.ts';

/** One benchmark result line: {"bench","metric","value","unit"} (plus optional context fields). */
export function report(bench: string, metric: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ bench, metric, value, unit, ...extra }) + '\n');
}

/** When the previous step was announced (performance.now(), ms since the benchmark's process started). */
let previousStep: number | undefined;

/**
 * One stderr line for a step: the time since the benchmark's process started, the UTC time of day
 * (to line it up with other records of the machine) and how long the previous step took, e.g.
 * `[  84.21 s 11:52:03.123] quitting DPDK txonly at 1500 B into net_vhost (previous step 3.02 s)`.
 * A slow step shows in the trace of any run, not only in one that missed its deadline.
 */
export function stepLine(what: string, now: number, previous: number | undefined, wallClock: Date): string {
  const took = previous === undefined ? '' : ` (previous step ${((now - previous) / 1000).toFixed(2)} s)`;
  return `[${(now / 1000).toFixed(2).padStart(7)} s ${wallClock.toISOString().slice(11, 23)}] ${what}${took}\n`;
}

/**
 * Says what the benchmark is doing now, as the rest of "deadline N s passed while ..." (e.g.
 * "waiting for DPDK txonly at 1500 B"): run.ts names the last step when the deadline passes.
 * Each step is also written to stderr with its time (stepLine), stdout keeping only results.
 */
export function step(what: string): void {
  const now = performance.now();
  process.stderr.write(stepLine(what, now, previousStep, new Date()));
  previousStep = now;
  // Only under run.ts, and only while it listens (after it is gone, the benchmark is ending).
  if (process.connected) process.send?.({ step: what } satisfies BenchMessage);
}
