/**
 * The reference vhost-user back-end, qemu-storage-daemon, under a stock Linux guest: one guest,
 * four vhost-user-blk-pci disks — the host distribution's daemon and the lab's, each asked for a
 * split and a packed ring. QEMU drops packed=on when the back-end does not offer RING_PACKED, so
 * what is asserted is what the guest really negotiated against what the back-end offers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { FrontendRequest, HEADER_SIZE } from '../../src/transports/vhost-user/constants.ts';
import { decodeMessage, encodeMessage } from '../../src/transports/vhost-user/messages.ts';
import { Feature } from '../../src/virtio/constants.ts';
import { shareDir, startGuest, type Guest } from '../lab/guest.ts';
import { startStorageDaemon } from '../lab/qsd.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The feature bits a vhost-user back-end offers (VHOST_USER_GET_FEATURES), asked on a connection of our own. */
async function offeredFeatures(socketPath: string): Promise<bigint> {
  const socket = connect(socketPath);
  try {
    await once(socket, 'connect');
    socket.write(encodeMessage('frontend-requests', { request: FrontendRequest.GET_FEATURES, payload: { kind: 'empty' } }).bytes);
    let reply = Buffer.alloc(0);
    while (reply.length < HEADER_SIZE + 8) reply = Buffer.concat([reply, (await once(socket, 'data'))[0] as Buffer]);
    const header = { request: reply.readUInt32LE(0), flags: reply.readUInt32LE(4), size: reply.readUInt32LE(8) };
    const view = new DataView(reply.buffer, reply.byteOffset + HEADER_SIZE, header.size);
    const message = decodeMessage('frontend-replies', header, view, [], { xenMmap: false });
    if (message instanceof Error) throw message;
    if (message.payload.kind !== 'u64') throw new Error(`GET_FEATURES answered with a ${message.payload.kind} payload`);
    return message.payload.value;
  } finally {
    socket.destroy();
  }
}

/** Negotiated features of the virtio device behind PCI slot `slot`, as the guest's sysfs string (bit 0 first). */
async function negotiated(guest: Guest, slot: number): Promise<{ disk: string; features: string }> {
  const pci = `0000:00:${slot.toString(16).padStart(2, '0')}.0`;
  const out = await guest.check(`for b in /sys/block/vd*; do case $(readlink -f $b/device) in */${pci}/virtio*) echo \${b##*/} $(cat $b/device/features);; esac; done`);
  const [disk, features] = out.trim().split(' ');
  return { disk, features };
}

test('vhost-user-blk against qemu-storage-daemon: negotiated ring layout and data both ways', async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'qsd');
  const disks = [];
  for (const qemu of ['system', 'lab'] as const) {
    for (const packed of [false, true]) {
      const name = `${qemu}-${packed ? 'packed' : 'split'}`;
      const image = join(share.dir, `${name}.img`);
      const pattern = randomBytes(MiB);
      writeFileSync(image, Buffer.concat([pattern, Buffer.alloc(MiB)]));
      const daemon = await startStorageDaemon({ image, socketPath: join(share.dir, `${name}.sock`), numQueues: 1, writable: true, qemu }, t);
      const offered = await offeredFeatures(daemon.socketPath);
      disks.push({ name, image, pattern, packed, daemon, offered, slot: 0x10 + disks.length });
    }
  }

  const guest = await startGuest(t, {
    name: 'qsd-vhost-user-blk',
    devices: disks.flatMap((d) => [
      '-chardev', `socket,id=${d.name},path=${share.qemuPath(d.daemon.socketPath)}`,
      '-device', `vhost-user-blk-pci,chardev=${d.name},addr=0x${d.slot.toString(16)},packed=${d.packed ? 'on' : 'off'}`,
    ]),
  });

  for (const d of disks) {
    const { disk, features } = await negotiated(guest, d.slot);
    assert.ok(disk, `${d.name}: the guest has a disk at slot ${d.slot}`);
    const offersPacked = (d.offered >> BigInt(Feature.RING_PACKED)) & 1n;
    const expected = d.packed && offersPacked === 1n ? '1' : '0';
    assert.equal(features[Feature.RING_PACKED], expected,
      `${d.name} (qemu-storage-daemon ${d.daemon.version}, offers RING_PACKED: ${offersPacked}): RING_PACKED negotiated`);
    assert.equal(features[Feature.VERSION_1], '1', `${d.name}: a modern device`);

    const read = await guest.check(`dd if=/dev/${disk} bs=64k count=16 iflag=direct 2>/dev/null | sha256sum`);
    assert.equal(read.split(' ')[0], sha256(d.pattern), `${d.name}: the guest reads the host's pattern`);
    const written = await guest.check(
      `head -c ${MiB} /dev/urandom > /tmp/p && dd if=/tmp/p of=/dev/${disk} bs=64k seek=16 oflag=direct conv=fsync 2>/dev/null && sha256sum < /tmp/p`);
    assert.equal(sha256(readFileSync(d.image).subarray(MiB)), written.split(' ')[0], `${d.name}: the image holds what the guest wrote`);
  }
});
