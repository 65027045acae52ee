import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { shareDir, startGuest, type Guest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

/** Brings up the guest's only virtio-net interface with `address` and returns its name. */
async function configure(guest: Guest, address: string): Promise<string> {
  const ifname = (await guest.check('basename /sys/bus/virtio/drivers/virtio_net/virtio*/net/*')).trim();
  await guest.check(`ip addr add ${address}/24 dev ${ifname} && ip link set ${ifname} up`);
  return ifname;
}

test('virtio-net: two guests on a datagram link ping each other and move a file over TCP', async (t) => {
  if (!requireLab(t)) return;
  // Each QEMU binds one Unix datagram socket and sends every frame to the other's.
  const link = shareDir(t, 'net');
  const [a, b] = [join(link.dir, 'a.sock'), join(link.dir, 'b.sock')].map((p) => link.qemuPath(p));
  const nic = (local: string, remote: string, mac: string): string[] => [
    '-netdev', `dgram,id=n0,local.type=unix,local.path=${local},remote.type=unix,remote.path=${remote}`,
    '-device', `virtio-net-pci,netdev=n0,mac=${mac}`,
  ];
  const [left, right] = await Promise.all([
    startGuest(t, { name: 'net-left', devices: nic(a, b, '52:54:00:00:00:0a') }),
    startGuest(t, { name: 'net-right', devices: nic(b, a, '52:54:00:00:00:0b') }),
  ]);
  const ifname = await configure(left, '10.0.2.1');
  await configure(right, '10.0.2.2');
  assert.equal((await left.check(`cat /sys/class/net/${ifname}/address`)).trim(), '52:54:00:00:00:0a');

  const ping = await left.run('ping -c 3 -W 10 10.0.2.2');
  assert.equal(ping.code, 0, `${ping.stdout}${ping.stderr}`);
  assert.match(ping.stdout, /3 packets transmitted, 3 packets received/);

  // 1 MiB from right to left over HTTP; the server is up once its port is listening.
  const sent = await right.check([
    'mkdir -p /srv && head -c 1048576 /dev/urandom > /srv/blob',
    'httpd -p 8080 -h /srv',
    'until netstat -ltn | grep -q ":8080 "; do usleep 10000; done',
    'sha256sum < /srv/blob',
  ].join(' && '));
  const received = await left.check('wget -q -O - http://10.0.2.2:8080/blob | sha256sum');
  assert.equal(received, sent);
  const rx = Number(await left.check(`cat /sys/class/net/${ifname}/statistics/rx_bytes`));
  assert.ok(rx > 1048576, `the interface counted the transfer (rx_bytes ${rx})`);
});
