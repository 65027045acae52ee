/** Scratch disks for a VM that was given none: sparse raw images, which cost no space until written. */
import { closeSync, ftruncateSync, openSync } from 'node:fs';

/**
 * A sparse raw image of `bytes` at `path`, made unless it exists (a VM run again in the same
 * directory finds its disk as it left it); only named when `make` is false.
 */
export function scratchImage(path: string, bytes: number, make: boolean): string {
  if (!make) return path;
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return path;
    throw new Error(`cannot make the scratch image ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)}).`, { cause: err });
  }
  try {
    ftruncateSync(fd, bytes);
  } finally {
    closeSync(fd);
  }
  return path;
}
