/**
 * Reproducible data for disk tests that check every byte they wrote: a seeded random choice and
 * a byte pattern that differs per seed and per 512-byte sector, so a misplaced sector shows.
 */

/** xorshift32: a reproducible mix, named by its seed in every failure message. */
export function random(seed: number): (n: number) => number {
  let state = seed >>> 0 || 1;
  return (n) => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state % n;
  };
}

export const pattern = (seed: number, bytes: number): Uint8Array => Uint8Array.from({ length: bytes }, (_, i) => (seed * 31 + i * 7 + (i >> 9)) & 0xff);
