/**
 * A stock Linux guest reads /dev/hwrng from paravirt's RngDevice through vhost-user-rng-pci,
 * with the back-end run as a user would run it: the `paravirt serve rng` command.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PeerProcess } from '../lab/peer-process.ts';
import { startGuest } from '../lab/guest.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));

test('vhost-user-rng: the guest reads random bytes from /dev/hwrng served by `paravirt serve rng`', async (t) => {
  if (!requireLab(t)) return;
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vu-rng-'));
  const socketPath = join(dir, 'rng.sock');
  // The command logs JSON lines on stdout; the "listening" line says the socket is ready.
  const backend = new PeerProcess('paravirt serve rng', [process.execPath, PARAVIRT, 'serve', 'rng', '--socket-path', socketPath], {
    textStdout: true,
  });
  t.after(async () => {
    await backend.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');

  const guest = await startGuest(t, {
    name: 'vu-rng',
    devices: ['-chardev', `socket,id=vurng,path=${qemu.toQemuPath(socketPath)}`, '-device', 'vhost-user-rng-pci,chardev=vurng'],
  });
  assert.match(await guest.check('cat /sys/class/misc/hw_random/rng_current'), /virtio_rng/);
  const hex = (await guest.check('dd if=/dev/hwrng bs=256 count=1 2>/dev/null | od -An -v -tx1')).replace(/\s+/g, '');
  assert.equal(hex.length, 512, 'the guest read 256 bytes');
  // 256 random bytes are never a single repeated value (probability 2^-2040).
  assert.ok(new Set(hex.match(/../g)).size > 1, 'the bytes vary');
  const again = (await guest.check('dd if=/dev/hwrng bs=256 count=1 2>/dev/null | od -An -v -tx1')).replace(/\s+/g, '');
  assert.notEqual(again, hex, 'two reads give different bytes');

  const exit = await backend.stop();
  assert.equal(exit.code, 0, 'the back-end exits cleanly on SIGTERM');
});
