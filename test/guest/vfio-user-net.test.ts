/**
 * Two stock Linux guests on one paravirt switch: one sees its NetDevice as a whole virtio-net PCI
 * function over vfio-user (its own virtio_pci and virtio_net drivers), the other through QEMU's
 * virtio-net-pci over vhost-user. They ping each other and move 4 MiB over TCP both ways.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pino } from 'pino';
import { openSegment } from '../../src/devices/net/segment.ts';
import { VirtioPciFunction } from '../../src/transports/pci-device/virtio-pci.ts';
import { VfioUserServer } from '../../src/transports/vfio-user/server.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { type Guest, shareDir, startGuest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

const TRANSFER_BYTES = 4 * 1024 * 1024;
const PORT = 5001;
const BOOT = { timeoutMs: 180_000 } as const;

async function configure(guest: Guest, address: string): Promise<string> {
  const ifname = (await guest.check('basename /sys/bus/virtio/drivers/virtio_net/virtio*/net/*')).trim();
  await guest.check(`ip addr add ${address}/24 dev ${ifname} && ip link set ${ifname} up`);
  return ifname;
}

async function pingOk(from: Guest, to: string): Promise<void> {
  const ping = await from.run(`ping -c 3 -W 10 ${to}`);
  assert.equal(ping.code, 0, `${ping.stdout}${ping.stderr}`);
  assert.match(ping.stdout, /3 packets transmitted, 3 packets received/);
}

/** TRANSFER_BYTES over TCP with busybox nc (as in vhost-user-net.test.ts); both checksums agree. */
async function transfer(sender: Guest, receiver: Guest, address: string): Promise<void> {
  await receiver.check(`(sleep 600 | (nc -l -p ${PORT} > /tmp/rx; echo done > /tmp/rx.done)) </dev/null >/dev/null 2>&1 &
until netstat -ltn | grep -q ":${PORT} "; do usleep 10000; done`);
  const sent = await sender.check(`head -c ${TRANSFER_BYTES} /dev/urandom > /tmp/tx && nc ${address} ${PORT} < /tmp/tx && sha256sum < /tmp/tx`, { timeoutMs: 180_000 });
  const received = await receiver.check('until [ -e /tmp/rx.done ]; do usleep 10000; done; rm /tmp/rx.done; wc -c < /tmp/rx; sha256sum < /tmp/rx', { timeoutMs: 180_000 });
  assert.equal(received, `${TRANSFER_BYTES}\n${sent}`);
}

test('vfio-user net: a guest on a vfio-user function and a guest on vhost-user share a switch, ping and move 4 MiB', async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'vfu-net');
  const segment = await openSegment({ switchName: 'sw0', devices: 2, queuePairs: 1 });
  const log = pino({ level: process.env.PARAVIRT_LOG ?? 'warn' });
  const [pciDevice, vhostDevice] = segment.devices;
  const vfioSocket = join(share.dir, 'vfu.sock');
  const vhostSocket = join(share.dir, 'vhu.sock');
  const vfio = VfioUserServer.listen(new VirtioPciFunction(pciDevice, log), { socketPath: vfioSocket }, log);
  const vhost = BackendServer.listen(vhostDevice, { socketPath: vhostSocket }, log);
  t.after(async () => {
    await Promise.all([vfio.close(), vhost.close()]);
    segment.close();
  });
  const vfioNic = JSON.stringify({ driver: 'vfio-user-pci', socket: { path: share.qemuPath(vfioSocket), type: 'unix' } });
  const left = await startGuest(t, { ...BOOT, name: 'vfu-net', devices: ['-device', vfioNic] });
  const right = await startGuest(t, {
    ...BOOT,
    name: 'vfu-net-peer',
    devices: ['-chardev', `socket,id=c0,path=${share.qemuPath(vhostSocket)}`, '-netdev', 'vhost-user,id=n0,chardev=c0', '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:00:02:02'],
  });
  // The vfio-user guest's NIC is a PCI function with virtio-net's modern id, bound by virtio-pci.
  assert.match(await left.check('cat /sys/bus/pci/devices/*/device'), /0x1041/);
  await configure(left, '10.0.5.1');
  await configure(right, '10.0.5.2');
  await pingOk(left, '10.0.5.2');
  await pingOk(right, '10.0.5.1');
  await transfer(left, right, '10.0.5.2');
  await transfer(right, left, '10.0.5.1');
  assert.ok(pciDevice.traffic.txBytes > TRANSFER_BYTES && pciDevice.traffic.rxBytes > TRANSFER_BYTES, 'the vfio-user device carried the transfers');
});
