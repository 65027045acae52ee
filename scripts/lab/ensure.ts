/**
 * `npm test` and `npm start` begin here: the lab (docs/lab.md) is set up when it is missing or
 * was built from other guest scripts than this checkout's. Setting it up needs root; without
 * root this says so in one line, and then `npm test` goes on (its peer and guest tiers skip,
 * or fail under CI=true) while `npm start` (`--required`) stops.
 *
 * With `--build`, `dist/` is compiled again when a file under `src/` is newer than the last
 * build (`npm ci` builds it; an unchanged checkout does not pay for a build at each start).
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { labUnavailable } from '../../test/lab/require.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const required = process.argv.includes('--required') || process.env.CI === 'true';

/** Run an npm script with the terminal; its exit status. */
function npmRun(script: string): number {
  return spawnSync('npm', ['run', script], { cwd: ROOT, stdio: 'inherit' }).status ?? 1;
}

/** The newest modification time of the files under `dir`. */
function newest(dir: string): number {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .reduce((t, e) => Math.max(t, statSync(join(e.parentPath, e.name)).mtimeMs), 0);
}

function ensureLab(): number {
  const reason = labUnavailable();
  if (reason === undefined) return 0;
  if (process.getuid?.() !== 0) {
    const message = `the lab (QEMU 11.1 and a Linux guest) is set up as root: run \`sudo npm run lab:setup\` once (${reason})`;
    process.stderr.write(required ? `${message}.\n` : `${message}; until then the peer and guest tiers are skipped.\n`);
    return required ? 1 : 0;
  }
  process.stderr.write(`Setting up the lab first (${reason}).\n`);
  return npmRun('lab:setup');
}

function ensureBuild(): number {
  const stamp = join(ROOT, 'dist/.tsbuildinfo');
  if (newest(join(ROOT, 'src')) <= (statSync(stamp, { throwIfNoEntry: false })?.mtimeMs ?? 0)) return 0;
  const status = npmRun('build');
  // tsc leaves its build info alone when nothing it emits changed (a file only touched).
  if (status === 0) utimesSync(stamp, new Date(), new Date());
  return status;
}

process.exitCode = ensureLab() || (process.argv.includes('--build') ? ensureBuild() : 0);
