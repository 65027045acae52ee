/**
 * The gate every peer and guest test passes first. In CI (CI=true) a tier that cannot run is a
 * failure; elsewhere, e.g. a laptop without root, the test is skipped with one loud line.
 */
import { basename, dirname } from 'node:path';
import type { TestContext } from 'node:test';
import { initramfsKey } from '../../scripts/lab/initramfs.ts';
import { LabMissingError, readManifest } from './qemu.ts';

/** Why the lab cannot run here, or undefined when it can. */
export function labUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'the lab needs root (QEMU runs in a chroot and opens host devices); run the tests as root';
  try {
    const manifest = readManifest();
    // The guest scripts are part of the checkout: an initramfs built from older ones would test stale code.
    if (!basename(manifest.initramfs).includes(`-${initramfsKey(dirname(manifest.kernel.vmlinux), manifest.kernel.release)}.`)) {
      return `${manifest.initramfs} was built from other guest scripts than scripts/lab/guest/; run \`sudo npm run lab:setup\``;
    }
  } catch (err) {
    if (err instanceof LabMissingError) return err.message;
    throw err;
  }
  return undefined;
}

/**
 * Returns true when the test may use the lab (or, given `reason`, when that is undefined: for a
 * test that needs something else of the machine). Otherwise throws in CI, or skips the test and
 * returns false: `if (!requireLab(t)) return;`
 */
export function requireLab(t: TestContext, reason: string | undefined = labUnavailable()): boolean {
  if (reason === undefined) return true;
  if (process.env.CI === 'true') throw new Error(`CI=true and the lab cannot run: ${reason}`);
  process.stderr.write(`\n*** SKIPPING "${t.name}": ${reason} ***\n`);
  t.skip(reason);
  return false;
}
