/**
 * `npm test` and `npm start` begin here: the lab (docs/lab.md) is set up when it is missing or
 * was built from other guest scripts than this checkout's. Setting it up needs root; without
 * root this says so in one line, and then `npm test` goes on (its peer and guest tiers skip,
 * or fail under CI=true) while `npm start` (`--required`) stops.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { labUnavailable } from '../../test/lab/require.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const required = process.argv.includes('--required') || process.env.CI === 'true';

const reason = labUnavailable();
if (reason !== undefined) {
  if (process.getuid?.() !== 0) {
    const message = `the lab (QEMU 11.1 and a Linux guest) is set up as root: run \`sudo npm run lab:setup\` once (${reason})`;
    process.stderr.write(required ? `${message}.\n` : `${message}; until then the peer and guest tiers are skipped.\n`);
    process.exitCode = required ? 1 : 0;
  } else {
    process.stderr.write(`Setting up the lab first (${reason}).\n`);
    const setup = spawnSync('npm', ['run', 'lab:setup'], { cwd: ROOT, stdio: 'inherit' });
    process.exitCode = setup.status ?? 1;
  }
}
