/**
 * `npm run lab:shell [-- QEMU ARGS...]`: the lab guest with its console on this terminal and a
 * root shell on it; arguments are extra QEMU options, e.g. `-device virtio-rng-pci`.
 * Ctrl-A X quits QEMU, Ctrl-A C toggles its monitor.
 */
import { spawnSync } from 'node:child_process';
import { machineArgs } from '../../test/lab/guest.ts';
import { qemuCommand, readManifest } from '../../test/lab/qemu.ts';
import { labUnavailable } from '../../test/lab/require.ts';

const reason = labUnavailable();
if (reason !== undefined) {
  console.error(`lab:shell: ${reason}`);
  process.exit(1);
}
const qemu = qemuCommand();
const args = [
  ...qemu.argv.slice(1),
  ...machineArgs(qemu, readManifest(), { name: 'shell', append: 'paravirt.shell=1' }),
  '-serial', 'mon:stdio',
  ...process.argv.slice(2),
];
console.error(`QEMU ${qemu.version}: ${qemu.argv.join(' ')} ${args.slice(qemu.argv.length - 1).join(' ')}`);
const res = spawnSync(qemu.argv[0], args, { stdio: 'inherit' });
process.exit(res.status ?? 1);
