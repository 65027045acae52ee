/**
 * A stock Linux guest (vmw_vsock_virtio_transport) binds to paravirt's vsock device through
 * QEMU's vhost-user-vsock-pci, the back-end run as a user would run it (`paravirt serve vsock`).
 * The guest image carries no vsock client yet, so this checks only the set-up:
 * the device is bound and /dev/vsock exists.
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

test('vhost-user-vsock: the guest binds vmw_vsock_virtio_transport to `paravirt serve vsock` and has /dev/vsock', async (t) => {
  if (!requireLab(t)) return;
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vu-vsock-'));
  const socketPath = join(dir, 'vsock.sock');
  const backend = new PeerProcess(
    'paravirt serve vsock',
    [process.execPath, PARAVIRT, 'serve', 'vsock', '--socket-path', socketPath, '--guest-cid', '7', '--uds-path', join(dir, 'v.sock')],
    { textStdout: true },
  );
  t.after(async () => {
    await backend.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  const guest = await startGuest(t, {
    name: 'vu-vsock',
    devices: ['-chardev', `socket,id=vuvs,path=${qemu.toQemuPath(socketPath)}`, '-device', 'vhost-user-vsock-pci,chardev=vuvs'],
  });
  const bound = await guest.check('ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/');
  assert.match(bound, /virtio\d+/, 'the stock driver bound the device');
  assert.match(await guest.check('ls -l /dev/vsock'), /vsock/);
  const exit = await backend.stop();
  assert.equal(exit.code, 0, 'the back-end exits cleanly on SIGTERM');
});
