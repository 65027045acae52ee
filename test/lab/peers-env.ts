/**
 * What the peer tier needs from the machine, and what happens when it is missing: in CI
 * (CI=true) a tier that cannot run fails, because a green run must mean the peers were exercised;
 * elsewhere the test is skipped with one loud line saying what to install.
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { TestContext } from 'node:test';

/** Absolute path of `program` on PATH, or undefined. */
export function findProgram(program: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, program);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/**
 * Returns true when `problem` is undefined (the peer is there). Otherwise fails the test in CI,
 * or skips it elsewhere after one loud line; the caller returns when this gives false.
 */
export function requirePeer(t: TestContext, problem: string | undefined): boolean {
  if (problem === undefined) return true;
  if (process.env.CI === 'true') throw new Error(`${problem} (CI requires every peer tier to run)`);
  console.error(`!!! SKIPPED ${t.name}: ${problem}`);
  t.skip(problem);
  return false;
}

/** A problem sentence when `program` is not installed, naming the Debian package that has it. */
export function missingProgram(program: string, debianPackage: string): string | undefined {
  return findProgram(program) ? undefined : `${program} is not installed (apt-get install ${debianPackage}, or npm run lab:setup)`;
}
