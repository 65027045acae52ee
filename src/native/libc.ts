/**
 * The one handle on the C library. Every native module declares the few functions it needs
 * against this handle, so libc is loaded once and the FFI boundary stays inside src/native/.
 * Linux only: the descriptors, flags and structures used here are Linux's.
 */
import koffi from 'koffi';
import type { KoffiFunc } from 'koffi';

export const libc = koffi.load('libc.so.6');

/** Declare one libc function, typed for TypeScript; koffi checks the C prototype string. */
export function declare<F extends (...args: never[]) => unknown>(prototype: string): KoffiFunc<F> {
  return libc.func(prototype) as KoffiFunc<F>;
}

/** A C `void *` as koffi returns it: the address as a bigint. */
export type Pointer = bigint;

/** The address mmap returns on failure, `(void *)-1`. */
export const MAP_FAILED: Pointer = 0xffff_ffff_ffff_ffffn;
