/** One benchmark result line: {"bench","metric","value","unit"} (plus optional context fields). */
export function report(bench: string, metric: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ bench, metric, value, unit, ...extra }) + '\n');
}
