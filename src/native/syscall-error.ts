/**
 * Failures of native calls as one typed error: which call failed, the errno (name and number)
 * and one sentence saying what was being done. Callers branch on `code`, people read `message`.
 */
import koffi from 'koffi';
import { declare } from './libc.ts';

const strerror = declare<(errnum: number) => string>('const char *strerror(int errnum)');

/** errno number -> name; where Linux has two names for one number the first koffi lists wins. */
const ERRNO_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(koffi.os.errno)) {
  if (!ERRNO_NAMES.has(value)) ERRNO_NAMES.set(value, name);
}

/** The errno values callers test for, by name, so no module spells a number. */
export const Errno = koffi.os.errno;

export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

export class SyscallError extends Error {
  /** The errno name, e.g. 'EBADF'. */
  readonly code: string;

  constructor(
    readonly syscall: string,
    readonly errno: number,
    /** What the call was doing, e.g. 'mapping 4096 bytes of fd 9'. */
    readonly context: string,
  ) {
    const code = errnoName(errno);
    super(`${syscall} failed ${context}: ${strerror(errno)} (${code})`);
    this.name = 'SyscallError';
    this.code = code;
  }
}

/** The errno of the native call that just returned (koffi saves it per call, sync or async). */
export function lastErrno(): number {
  return koffi.errno();
}

/** `result` when the call succeeded (>= 0), otherwise a SyscallError built from errno. */
export function check(syscall: string, result: number, context: string): number {
  if (result < 0) throw new SyscallError(syscall, koffi.errno(), context);
  return result;
}
