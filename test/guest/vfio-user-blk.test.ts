/**
 * A stock Linux guest uses paravirt's BlkDevice as a whole PCI function: QEMU's vfio-user-pci is
 * the client, this process the vfio-user server (VirtioPciFunction over VfioUserServer, as
 * `paravirt serve blk --transport vfio-user` runs it), and the guest's own virtio_pci driver
 * binds to it. What the guest writes must land in the image file.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { BlkDevice } from '../../src/devices/blk/device.ts';
import { FileBackend } from '../../src/storage/file-backend.ts';
import { VirtioPciFunction } from '../../src/transports/pci-device/virtio-pci.ts';
import { VfioUserServer } from '../../src/transports/vfio-user/server.ts';
import { startGuest, type Guest } from '../lab/guest.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 128 * MiB;
const PATTERN_MiB = 64;
/** Bit 34 of the guest's negotiated features (VIRTIO_F_RING_PACKED). */
const RING_PACKED = 34;

interface Disk {
  readonly image: string;
  readonly devices: string[];
}

async function serveDisk(t: TestContext, packed: boolean): Promise<Disk> {
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vfu-blk-'));
  const image = join(dir, 'disk.img');
  writeFileSync(image, new Uint8Array(0));
  truncateSync(image, IMAGE_SIZE);
  const socketPath = join(dir, 'blk.sock');
  const backend = await FileBackend.open(image, { readOnly: false });
  const device = new BlkDevice({ backend, features: { packed } });
  const log = pino({ level: process.env.PARAVIRT_LOG ?? 'warn' });
  const server = VfioUserServer.listen(new VirtioPciFunction(device, log), { socketPath }, log);
  t.after(async () => {
    await server.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const socket = JSON.stringify({ driver: 'vfio-user-pci', socket: { path: qemu.toQemuPath(socketPath), type: 'unix' } });
  return { image, devices: ['-device', socket] };
}

/** The sysfs directory of the guest's virtio-blk PCI function (device id 0x1042). */
async function blkFunction(guest: Guest): Promise<string> {
  return (await guest.check('grep -l 0x1042 /sys/bus/pci/devices/*/device | head -1 | xargs dirname')).trim();
}

async function blkFeatures(guest: Guest): Promise<string> {
  const out = await guest.check('for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0002 ] && cat $d/features; done');
  return out.trim();
}

async function patternRoundTrip(guest: Guest, image: string): Promise<void> {
  await guest.check(`dd if=/dev/urandom of=/tmp/pattern bs=1M count=${PATTERN_MiB} 2>/dev/null`);
  const written = (await guest.check('sha256sum /tmp/pattern')).split(' ')[0];
  await guest.check('dd if=/tmp/pattern of=/dev/vda bs=1M oflag=direct 2>/dev/null', { timeoutMs: 180_000 });
  const readBack = (await guest.check(`dd if=/dev/vda bs=1M count=${PATTERN_MiB} iflag=direct 2>/dev/null | sha256sum`, { timeoutMs: 180_000 })).split(' ')[0];
  assert.equal(readBack, written, 'the guest reads back what it wrote');
  const onHost = createHash('sha256').update(readFileSync(image).subarray(0, PATTERN_MiB * MiB)).digest('hex');
  assert.equal(onHost, written, 'the image file holds what the guest wrote');
}

test('vfio-user blk, split ring: PCI identity and capabilities, 64 MiB pattern, MSI-X in use, unbind and bind again', async (t) => {
  if (!requireLab(t)) return;
  const disk = await serveDisk(t, false);
  const guest = await startGuest(t, { name: 'vfu-blk-split', devices: disk.devices });
  const fn = await blkFunction(guest);
  assert.equal((await guest.check(`cat ${fn}/vendor`)).trim(), '0x1af4');
  assert.equal((await guest.check(`cat ${fn}/subsystem_device`)).trim(), '0x1042');
  // The capability list as lspci walks it: vendor-specific (0x09) structures, then MSI-X (0x11).
  const config = (await guest.check(`od -An -v -tx1 -N256 ${fn}/config`)).split(/\s+/).filter((b) => b !== '').map((b) => parseInt(b, 16));
  const ids: number[] = [];
  for (let at = config[0x34]; at !== 0 && ids.length < 48; at = config[at + 1]) ids.push(config[at]);
  assert.deepEqual(ids, [0x09, 0x09, 0x09, 0x09, 0x09, 0x11], 'common, notify, ISR, device configuration, PCI configuration access, MSI-X');
  assert.equal((await guest.check(`basename $(readlink ${fn}/driver)`)).trim(), 'virtio-pci');
  assert.equal((await blkFeatures(guest))[RING_PACKED], '0', 'a split ring was negotiated');

  await patternRoundTrip(guest, disk.image);
  assert.match(await guest.check('grep virtio /proc/interrupts'), /PCI-MSIX.*virtio\d+-req/, 'the request queue interrupts through MSI-X');

  // Unbinding resets the device (status 0); binding again renegotiates and the disk still works.
  const slot = fn.split('/').pop()!;
  await guest.check(`echo ${slot} > /sys/bus/pci/drivers/virtio-pci/unbind`);
  assert.equal((await guest.run('test -e /dev/vda')).code, 1, 'the disk is gone after unbind');
  await guest.check(`echo ${slot} > /sys/bus/pci/drivers/virtio-pci/bind; for i in $(seq 100); do [ -e /dev/vda ] && break; sleep 0.1; done; test -e /dev/vda`);
  const again = (await guest.check(`dd if=/dev/vda bs=1M count=${PATTERN_MiB} iflag=direct 2>/dev/null | sha256sum`, { timeoutMs: 180_000 })).split(' ')[0];
  assert.equal(again, (await guest.check('sha256sum /tmp/pattern')).split(' ')[0], 'after rebinding the disk reads back the pattern');
});

test('vfio-user blk, packed ring: 64 MiB pattern written and read back', async (t) => {
  if (!requireLab(t)) return;
  const disk = await serveDisk(t, true);
  const guest = await startGuest(t, { name: 'vfu-blk-packed', devices: disk.devices });
  assert.equal((await blkFeatures(guest))[RING_PACKED], '1', 'a packed ring was negotiated');
  await patternRoundTrip(guest, disk.image);
});

test('vfio-user blk with MSI disabled in the guest: INTx and the ISR carry the interrupts', async (t) => {
  if (!requireLab(t)) return;
  const disk = await serveDisk(t, false);
  const guest = await startGuest(t, { name: 'vfu-blk-intx', devices: disk.devices, append: 'pci=nomsi' });
  await guest.check('dd if=/dev/urandom of=/tmp/p bs=1M count=8 2>/dev/null; dd if=/tmp/p of=/dev/vda bs=1M oflag=direct 2>/dev/null', { timeoutMs: 120_000 });
  const a = (await guest.check('sha256sum /tmp/p')).split(' ')[0];
  const b = (await guest.check('dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | sha256sum', { timeoutMs: 120_000 })).split(' ')[0];
  assert.equal(b, a, 'the guest reads back what it wrote');
  const interrupts = await guest.check('grep virtio /proc/interrupts');
  assert.doesNotMatch(interrupts, /MSI/, 'no MSI-X vector is in use');
  assert.match(interrupts, /IO-APIC.*virtio/, 'the device interrupts through its INTx line');
});
