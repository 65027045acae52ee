/**
 * Stock Linux guests under QEMU use paravirt's NetDevice through `-netdev vhost-user` and
 * virtio-net-pci: QEMU is the front-end, this process the back-end, serving the segment
 * `paravirt serve net` builds (one learning switch, one device per socket). Two guests on one
 * switch must reach each other as on a wire, on either ring layout and with two queue pairs,
 * and a link taken down through the device API must be seen by the guest's driver.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pino } from 'pino';
import { openSegment, type Segment } from '../../src/devices/net/segment.ts';
import { LinkedNetServer } from '../../src/cli/net-link.ts';
import { type Guest, shareDir, startGuest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

/** Bit 34 of the guest's negotiated features (VIRTIO_F_RING_PACKED). */
const RING_PACKED = 34;
const TRANSFER_BYTES = 4 * 1024 * 1024;
const PORT = 5001;
/** Two or four TCG guests boot at once on a machine that may be busy: allow for a slow boot. */
const BOOT = { timeoutMs: 180_000 } as const;

interface Nic {
  readonly packed?: boolean;
  /** Queue pairs (QEMU's queues= and mq=on). */
  readonly queues?: number;
}

interface Served {
  readonly segment: Segment;
  /** Kicks each device received, per queue. */
  readonly kicks: number[][];
  readonly servers: readonly LinkedNetServer[];
  /** QEMU arguments connecting a guest's virtio-net-pci to device `i`. */
  nic(i: number, options?: Nic): string[];
}

/** `count` devices of `queues` pairs on one switch, each behind its own socket, gone when the test ends. */
async function serveSegment(t: TestContext, count: number, queues = 1): Promise<Served> {
  const share = shareDir(t, 'vu-net');
  const segment = await openSegment({ switchName: 'sw0', devices: count, queuePairs: queues });
  const log = pino({ level: process.env.PARAVIRT_LOG ?? 'warn' });
  const sockets = segment.devices.map((_, i) => join(share.dir, `vm${i}.sock`));
  const kicks = segment.devices.map((device) => {
    const counts = new Array<number>(device.numQueues).fill(0);
    const notify = device.queueNotify.bind(device);
    device.queueNotify = (index: number): void => {
      counts[index]++;
      notify(index);
    };
    return counts;
  });
  const servers = segment.devices.map((device, i) => new LinkedNetServer(device, sockets[i], log.child({ vm: i })));
  t.after(async () => {
    await Promise.all(servers.map((s) => s.close()));
    segment.close();
  });
  return {
    segment,
    kicks,
    servers,
    nic: (i, options = {}) => {
      const pairs = options.queues ?? 1;
      const device = [`virtio-net-pci,netdev=n0,mac=52:54:00:00:01:0${i}`];
      if (options.packed === true) device.push('packed=on');
      // One vector per queue, one for the control queue, one for configuration changes.
      if (pairs > 1) device.push(`mq=on,vectors=${2 * pairs + 2}`);
      return [
        // QEMU takes the link down when the back-end's socket closes and reconnects after reconnect-ms.
        '-chardev', `socket,id=c0,path=${share.qemuPath(sockets[i])},reconnect-ms=200`,
        '-netdev', `vhost-user,id=n0,chardev=c0,queues=${pairs}`,
        '-device', device.join(','),
      ];
    },
  };
}

/** The guest's virtio-net interface, brought up with `address`/24. */
async function configure(guest: Guest, address: string): Promise<string> {
  const ifname = (await guest.check('basename /sys/bus/virtio/drivers/virtio_net/virtio*/net/*')).trim();
  await guest.check(`ip addr add ${address}/24 dev ${ifname} && ip link set ${ifname} up`);
  return ifname;
}

/** Whether the guest's driver negotiated `bit`, from the string of 0/1 the virtio bus shows. */
async function negotiated(guest: Guest, bit: number): Promise<boolean> {
  const features = (await guest.check('cat /sys/bus/virtio/drivers/virtio_net/virtio*/features')).trim();
  return features[bit] === '1';
}

async function pingOk(from: Guest, to: string): Promise<void> {
  const ping = await from.run(`ping -c 3 -W 10 ${to}`);
  assert.equal(ping.code, 0, `${ping.stdout}${ping.stderr}`);
  assert.match(ping.stdout, /3 packets transmitted, 3 packets received/);
}

/**
 * TRANSFER_BYTES of random data from `sender` to `receiver` (at `address`) over TCP with busybox
 * nc; the checksums on both ends must agree. `cpu` pins the sender, which picks its transmit queue.
 */
async function transfer(sender: Guest, receiver: Guest, address: string, cpu?: number): Promise<void> {
  // The listener is up once its port shows in netstat. Its stdin must stay open: busybox nc
  // half-closes the connection at EOF there, and the sender stops sending when it sees that.
  // The sender half-closes at the end of its file, and the listener then exits.
  await receiver.check(`(sleep 600 | (nc -l -p ${PORT} > /tmp/rx; echo done > /tmp/rx.done)) </dev/null >/dev/null 2>&1 &
until netstat -ltn | grep -q ":${PORT} "; do usleep 10000; done`);
  const sent = await sender.check(
    `head -c ${TRANSFER_BYTES} /dev/urandom > /tmp/tx && ${cpu === undefined ? '' : `taskset -c ${cpu} `}nc ${address} ${PORT} < /tmp/tx && sha256sum < /tmp/tx`,
  );
  const received = await receiver.check('until [ -e /tmp/rx.done ]; do usleep 10000; done; rm /tmp/rx.done; wc -c < /tmp/rx; sha256sum < /tmp/rx');
  assert.equal(received, `${TRANSFER_BYTES}\n${sent}`);
}

test('vhost-user-net: a split-ring and a packed-ring guest on one switch ping each other and move 4 MiB over TCP; the link goes down and up', async (t) => {
  if (!requireLab(t)) return;
  const served = await serveSegment(t, 2);
  const [left, right] = await Promise.all([
    startGuest(t, { ...BOOT, name: 'vu-net-split', devices: served.nic(0) }),
    startGuest(t, { ...BOOT, name: 'vu-net-packed', devices: served.nic(1, { packed: true }) }),
  ]);
  assert.equal(await negotiated(left, RING_PACKED), false);
  assert.equal(await negotiated(right, RING_PACKED), true, 'packed=on negotiated VIRTIO_F_RING_PACKED');
  const ifname = await configure(left, '10.0.3.1');
  const rightIf = await configure(right, '10.0.3.2');

  await pingOk(left, '10.0.3.2');
  await pingOk(right, '10.0.3.1');
  await transfer(left, right, '10.0.3.2');
  await transfer(right, left, '10.0.3.1');
  const [a, b] = served.segment.devices;
  assert.ok(a.traffic.txBytes > TRANSFER_BYTES && b.traffic.rxBytes > TRANSFER_BYTES, 'the devices counted the transfer');
  assert.equal(served.segment.switch.addresses().size, 2, 'the switch learned both guests');

  // Down through the serving API: the guest's driver sees the carrier go, and frames stop. The
  // split-ring guest's link is the one toggled: after a reconnect, its packed ring fails to resume
  // in the back-end (QEMU logs "vhost vring error in virtqueue 0"), which is still open.
  await served.servers[0].setLink(false);
  await left.check(`until [ "$(cat /sys/class/net/${ifname}/carrier)" = 0 ]; do usleep 10000; done`);
  const lost = await right.run('ping -c 1 -W 1 10.0.3.1');
  assert.notEqual(lost.code, 0, 'no reply while the link is down');
  assert.equal(a.link, false);
  await served.servers[0].setLink(true);
  await left.check(`until [ "$(cat /sys/class/net/${ifname}/carrier)" = 1 ]; do usleep 10000; done`);
  await pingOk(right, '10.0.3.1');
  assert.equal((await right.check(`cat /sys/class/net/${rightIf}/carrier`)).trim(), '1');
});

test('vhost-user-net: two guests with two queue pairs each use both, and move 4 MiB over TCP', async (t) => {
  if (!requireLab(t)) return;
  const served = await serveSegment(t, 2, 2);
  const [left, right] = await Promise.all([
    startGuest(t, { ...BOOT, name: 'vu-net-mq-a', cpus: 2, devices: served.nic(0, { queues: 2 }) }),
    startGuest(t, { ...BOOT, name: 'vu-net-mq-b', cpus: 2, devices: served.nic(1, { queues: 2, packed: true }) }),
  ]);
  const ifname = await configure(left, '10.0.4.1');
  await configure(right, '10.0.4.2');
  // Linux uses as many pairs as it has CPUs (up to the device's maximum); sysfs lists each queue.
  assert.equal((await left.check(`ls /sys/class/net/${ifname}/queues`)).trim().split(/\s+/).sort().join(' '), 'rx-0 rx-1 tx-0 tx-1');

  await pingOk(left, '10.0.4.2');
  // A sender on CPU 0, then on CPU 1: transmit packet steering gives each CPU its own queue.
  await transfer(left, right, '10.0.4.2', 0);
  await transfer(left, right, '10.0.4.2', 1);
  const [kicksA] = served.kicks;
  assert.ok(kicksA[1] > 0 && kicksA[3] > 0, `both transmit queues were kicked (transmitq1 ${kicksA[1]}, transmitq2 ${kicksA[3]})`);
});
