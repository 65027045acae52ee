import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startGuest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

test('virtio-rng: /dev/hwrng delivers entropy from the device', async (t) => {
  if (!requireLab(t)) return;
  const guest = await startGuest(t, { name: 'virtio-rng', devices: ['-device', 'virtio-rng-pci,id=rng0'] });

  assert.match(await guest.check('cat /sys/class/misc/hw_random/rng_current'), /^virtio_rng\.\d+\n$/);
  const a = await guest.run('dd if=/dev/hwrng bs=4096 count=4 iflag=fullblock 2>/dev/null');
  const b = await guest.run('dd if=/dev/hwrng bs=4096 count=4 iflag=fullblock 2>/dev/null');
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.stdoutBytes.length, 16384);
  assert.equal(b.stdoutBytes.length, 16384);
  assert.notDeepEqual(a.stdoutBytes, b.stdoutBytes, 'two reads give different bytes');
  const distinct = new Set(a.stdoutBytes).size;
  assert.ok(distinct > 200, `16 KiB of entropy uses most byte values (saw ${distinct})`);
});
