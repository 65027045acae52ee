import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEVICE_TYPES } from '../../../src/devices/registry.ts';
import { planVm, shellLine, type VmOptions } from '../../../src/run/vm.ts';

// Any regular files do for planning: nothing is started.
const FILE = fileURLToPath(import.meta.url);
const base: VmOptions = { qemu: process.execPath, kernel: FILE, memoryMiB: 512, cpus: 2, printOnly: true, dir: tmpdir() };

test('every registered device type says how QEMU attaches it', () => {
  for (const type of DEVICE_TYPES) assert.ok(type.qemu !== undefined, `${type.name} has a qemu attachment`);
});

test('the VM has one device of every type, each on its socket in the VM directory, on shared guest RAM', async () => {
  const vm = await planVm(base);
  const argv = vm.qemu.join(' ');
  assert.equal(vm.qemu[0], process.execPath);
  assert.match(argv, /-object memory-backend-memfd,id=ram,size=512M,share=on -machine memory-backend=ram/);
  assert.match(argv, /-smp 2 /);
  for (const type of DEVICE_TYPES) {
    const socket = join(tmpdir(), `${type.name}0.sock`);
    assert.ok(vm.backend.devices.some((d) => d.id === `${type.name}0` && d.type === type), `${type.name}0 is planned`);
    // A vhost-user chardev names the socket in its options, a vfio-user-pci device in its JSON.
    assert.ok(argv.includes(`path=${socket}`) || argv.includes(`"path":"${socket}"`), `QEMU connects to ${socket}`);
  }
  assert.match(argv, /-device vhost-user-blk-pci,id=blk0,chardev=blk0-sock,num-queues=1/);
  assert.match(argv, /-chardev socket,id=net0-sock,path=[^ ]*net0.sock,reconnect-ms=1000 -netdev vhost-user,id=net0,chardev=net0-sock,queues=1 -device virtio-net-pci,id=net0,netdev=net0/);
  // The console device carries the VM's console, named last so that it is /dev/console.
  assert.equal(vm.backend.console, 'console0');
  assert.match(vm.qemu[vm.qemu.indexOf('-append') + 1], / console=hvc0$/);
  assert.deepEqual(vm.left, []);
});

test('next to the keyboard the VM has a tablet, the pointer the dashboard\'s screen moves', async () => {
  const vm = await planVm(base);
  const inputs = vm.backend.devices.filter((d) => d.type.name === 'input').map((d) => [d.id, d.values.kind]);
  assert.deepEqual(inputs, [['input0', 'keyboard'], ['input1', 'tablet']]);
  assert.match(vm.qemu.join(' '), /-chardev socket,id=input1-sock,path=[^ ]*input1.sock -device vhost-user-input-pci,id=input1,chardev=input1-sock/);
});

test('the back-ends offer the vhost-user CONFIG protocol feature except where QEMU\'s front-end provides the configuration space', async () => {
  const vm = await planVm(base);
  const withoutConfig = vm.backend.devices.filter((d) => d.transport === 'vhost-user' && d.offerConfig === false).map((d) => d.id);
  assert.deepEqual(withoutConfig.sort(), ['net0', 'scsi0'], 'virtio-net over a vhost-user netdev and vhost-user-scsi-pci');
});

test('the disk given is the one served; without it a scratch image is made in the VM directory', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-vm-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const given = await planVm({ ...base, disk: FILE });
  assert.equal(given.backend.devices.find((d) => d.id === 'blk0')?.values.image, FILE);
  const scratch = await planVm({ ...base, dir, printOnly: false });
  assert.equal(scratch.backend.devices.find((d) => d.id === 'blk0')?.values.image, join(dir, 'disk.img'));
  assert.equal(scratch.ownDir, false, 'a directory given is kept');
});

test('bad paths are refused in one sentence naming the option', async () => {
  await assert.rejects(planVm({ ...base, disk: '/nonexistent/disk.img' }), /^Error: --disk \/nonexistent\/disk.img does not exist\.$/);
  await assert.rejects(planVm({ ...base, kernel: tmpdir() }), new RegExp(`^Error: --kernel ${tmpdir()} is not a regular file\\.$`));
  await assert.rejects(planVm({ ...base, qemu: '/nonexistent/qemu' }), /^Error: --qemu \/nonexistent\/qemu does not exist\.$/);
  await assert.rejects(planVm({ ...base, dir: FILE }), /^Error: --dir .* is not a directory\.$/);
  await assert.rejects(planVm({ ...base, kernel: undefined }), /^Error: --kernel <file> is required with --qemu\.$/);
});

test('the printed command line reads back as the same words in a shell', async () => {
  const vm = await planVm({ ...base, append: "quiet init=/bin/sh it's" });
  const words = execFileSync('sh', ['-c', `for w in ${shellLine(vm.qemu)}; do printf '%s\\n' "$w"; done`], { encoding: 'utf8' });
  assert.deepEqual(words.trimEnd().split('\n'), vm.qemu);
});
