/**
 * `tsx scripts/lab/boot-time.ts [COUNT]`: boots the lab guest COUNT times (default 3), one after
 * another, and prints one JSON line per boot and one for the median: milliseconds from spawning
 * QEMU to the agent answering, and the guest's own uptime at that moment.
 */
import { report } from '../../bench/_report.ts';
import { bootGuest } from '../../test/lab/guest.ts';
import { labUnavailable } from '../../test/lab/require.ts';

const reason = labUnavailable();
if (reason !== undefined) {
  console.error(`boot-time: ${reason}`);
  process.exit(1);
}
const count = Number(process.argv[2] ?? 3);
if (!Number.isInteger(count) || count < 1) {
  console.error(`boot-time: COUNT must be a positive integer, got "${process.argv[2]}"`);
  process.exit(2);
}
const times: number[] = [];
for (let i = 0; i < count; i++) {
  const guest = await bootGuest({ name: 'boot-time' });
  try {
    const uptime = Number((await guest.check('cut -d" " -f1 /proc/uptime')).trim());
    times.push(guest.bootMs);
    report('lab-boot', 'agent_ready', guest.bootMs, 'ms', { run: i + 1, guestUptimeS: uptime, kernel: guest.release });
  } finally {
    await guest.shutdown();
  }
}
times.sort((a, b) => a - b);
report('lab-boot', 'agent_ready_median', times[Math.floor(times.length / 2)], 'ms', { runs: count });
