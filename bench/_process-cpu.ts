/** CPU time of another process, read from /proc, for benchmarks that charge a peer's CPU to the work it did. */
import { readFileSync } from 'node:fs';

/** Linux reports process CPU times in USER_HZ ticks, 100 per second on every architecture it ships. */
const USER_HZ = 100;

/** CPU seconds (user + system, all threads) process `pid` has used so far; 10 ms resolution. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / USER_HZ; // utime, stime: fields 14 and 15
}
