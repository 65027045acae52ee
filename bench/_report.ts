import type { BenchMessage } from './run.ts';

/** One benchmark result line: {"bench","metric","value","unit"} (plus optional context fields). */
export function report(bench: string, metric: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ bench, metric, value, unit, ...extra }) + '\n');
}

/**
 * Says what the benchmark is doing now, as the rest of "deadline N s passed while ..." (e.g.
 * "waiting for DPDK txonly at 1500 B"): run.ts names the last step when the deadline passes.
 */
export function step(what: string): void {
  // Only under run.ts, and only while it listens (after it is gone, the benchmark is ending).
  if (process.connected) process.send?.({ step: what } satisfies BenchMessage);
}
