/**
 * Programs the peer tier needs from the host, as problem sentences for requireLab(t, reason):
 * in CI a missing one fails the test, elsewhere it is skipped with one loud line.
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Absolute path of `program` on PATH, or undefined. */
function findProgram(program: string): string | undefined {
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

/** A problem sentence when `program` is not installed, naming the Debian package that has it. */
export function missingProgram(program: string, debianPackage: string): string | undefined {
  return findProgram(program) ? undefined : `${program} is not installed (apt-get install ${debianPackage}, or npm run lab:setup)`;
}
