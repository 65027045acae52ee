/**
 * A stock Linux guest binds its own virtio_pci and virtio_balloon to a whole virtio-balloon PCI
 * function served by `paravirt serve balloon --transport vfio-user` through QEMU's vfio-user-pci,
 * and the user's controls move its memory as over vhost-user: inflated pages leave QEMU's memfd.
 */
import { test } from 'node:test';
import { serveBalloonEndToEnd } from '../lab/balloon.ts';
import { requireLab } from '../lab/require.ts';

test('vfio-user balloon: `paravirt balloon set` inflates, releasing guest memory on the host, deflating gives it back, `stats` match /proc/meminfo', async (t) => {
  if (!requireLab(t)) return;
  await serveBalloonEndToEnd(t, 'vfio-user', 512);
});
