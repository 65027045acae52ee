/**
 * A guest's /dev/fb0 as the display tests use it: stop the console drawing on it, write a known
 * pattern into some of its rows, and compare a host-side picture of the screen with it.
 */
import type { Guest } from './guest.ts';

/** A pattern no two neighbouring pixels share. */
export function pattern(x: number, y: number): [number, number, number] {
  return [(x * 5 + y * 3) & 0xff, (x + y * 11) & 0xff, (x * y) & 0xff];
}

/** How long the guest's deferred framebuffer I/O and display work may take under TCG. */
export const SETTLE_MS = 30_000;

/**
 * Polls `probe` until it returns true: the guest's deferred I/O and work queues have no event a
 * test can wait on. The deadline fails with `what` and what `detail` says then.
 */
export async function until(what: string, probe: () => Promise<boolean>, detail: () => string = () => ''): Promise<void> {
  const deadline = Date.now() + SETTLE_MS;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${SETTLE_MS} ms${detail() ? `: ${detail()}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Unbinds the framebuffer console (fbcon) so that only what the test writes reaches /dev/fb0,
 * then writes `rows` rows of the pattern from row `top`, in fb0's XRGB8888 layout (bytes B, G, R,
 * X, `stride` bytes a row). The rows travel base64-encoded in the agent's script.
 */
export async function writePattern(guest: Guest, width: number, top: number, rows: number): Promise<void> {
  await guest.check('for v in /sys/class/vtconsole/vtcon*; do grep -q "frame buffer" $v/name && echo 0 > $v/bind; done; true');
  const stride = Number((await guest.check('cat /sys/class/graphics/fb0/stride')).trim());
  if (!(stride >= width * 4)) throw new Error(`fb0 stride ${stride} is below ${width} pixels`);
  const bytes = Buffer.alloc(stride * rows);
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pattern(x, top + y);
      bytes.set([b, g, r, 0], y * stride + x * 4);
    }
  }
  await guest.check(`printf '%s' '${bytes.toString('base64')}' | base64 -d > /tmp/pattern && dd if=/tmp/pattern of=/dev/fb0 bs=${stride} seek=${top} conv=notrunc 2>/dev/null`);
}

/** The first pixel of rows [top, top + rows) of an RGBA picture that is not the pattern, or '' when all are. */
export function patternMismatch(png: { width: number; pixels: Uint8Array }, width: number, top: number, rows: number): string {
  for (let y = top; y < top + rows; y++) {
    for (let x = 0; x < width; x++) {
      const o = (y * png.width + x) * 4;
      const want = pattern(x, y);
      const got = [...png.pixels.subarray(o, o + 3)];
      if (got.join() !== want.join()) return `pixel (${x}, ${y}) is ${got.join()}, not ${want.join()}`;
    }
  }
  return '';
}
