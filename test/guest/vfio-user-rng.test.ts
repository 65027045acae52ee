/**
 * A stock Linux guest binds its own virtio_pci driver to a whole virtio-rng PCI function served by
 * `paravirt serve rng --transport vfio-user` through QEMU's vfio-user-pci, and reads /dev/hwrng.
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

test('vfio-user rng: the guest binds virtio_pci to the served PCI function and reads /dev/hwrng', async (t) => {
  if (!requireLab(t)) return;
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vfu-rng-'));
  const socketPath = join(dir, 'rng.sock');
  const server = new PeerProcess('paravirt serve rng --transport vfio-user', [process.execPath, PARAVIRT, 'serve', 'rng', '--transport', 'vfio-user', '--socket-path', socketPath], {
    textStdout: true,
  });
  t.after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await server.waitForOutput(/vfio-user server listening/, 0, 'starting to listen');

  const socket = JSON.stringify({ driver: 'vfio-user-pci', socket: { path: qemu.toQemuPath(socketPath), type: 'unix' } });
  const guest = await startGuest(t, { name: 'vfu-rng', devices: ['-device', socket] });

  // lspci's view from sysfs: vendor 1af4, device 0x1040 + 4 (entropy source), modern revision 1.
  const fn = (await guest.check("grep -l 0x1044 /sys/bus/pci/devices/*/device | head -1 | xargs dirname")).trim();
  assert.match(fn, /\/sys\/bus\/pci\/devices\//, 'a PCI function with device id 0x1044 exists');
  assert.equal((await guest.check(`cat ${fn}/vendor`)).trim(), '0x1af4');
  assert.equal((await guest.check(`cat ${fn}/revision`)).trim(), '0x01');
  assert.equal((await guest.check(`basename $(readlink ${fn}/driver)`)).trim(), 'virtio-pci', 'the stock virtio_pci driver is bound');
  assert.match(await guest.check('cat /sys/class/misc/hw_random/rng_current'), /virtio_rng/);

  const hex = (await guest.check('dd if=/dev/hwrng bs=256 count=1 2>/dev/null | od -An -v -tx1')).replace(/\s+/g, '');
  assert.equal(hex.length, 512, 'the guest read 256 bytes');
  assert.ok(new Set(hex.match(/../g)).size > 1, 'the bytes vary');
  const again = (await guest.check('dd if=/dev/hwrng bs=256 count=1 2>/dev/null | od -An -v -tx1')).replace(/\s+/g, '');
  assert.notEqual(again, hex, 'two reads give different bytes');

  // MSI-X carries the queue's interrupts: the guest lists virtio vectors in /proc/interrupts.
  assert.match(await guest.check('cat /proc/interrupts'), /virtio\d+-(requests|input|config)/);
});
