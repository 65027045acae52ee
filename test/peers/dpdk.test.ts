import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Feature, hasFeature } from '../../src/virtio/constants.ts';
import { startTestpmd, type Testpmd, type TestpmdPort } from '../lab/dpdk.ts';
import { missingProgram } from '../lab/peers-env.ts';
import { requireLab } from '../lab/require.ts';

/** Packets the back-end must have seen before the sender is stopped: enough to go round every ring many times. */
const ENOUGH_PACKETS = 20_000;

/** §5.1.3: the driver can merge receive buffers. */
const VIRTIO_NET_F_MRG_RXBUF = 15;

/** Asks for the receiver's counters until it has seen `count` packets (each answer comes from testpmd, no clock involved). */
async function receivedAtLeast(receiver: Testpmd, count: number): Promise<number> {
  for (let asked = 0; asked < 10_000; asked++) {
    const { rxPackets } = await receiver.portStats();
    if (rxPackets >= count) return rxPackets;
  }
  throw new Error(`the receiver never got ${count} packets`);
}

type DriverPort = Omit<Extract<TestpmdPort, { kind: 'virtio-user' }>, 'kind' | 'socketPath'>;

/**
 * A net_vhost back-end and a net_virtio_user driver, one sending 64-byte frames (txonly) and the
 * other counting them (rxonly): `from` says which side sends.
 */
async function exchange(t: TestContext, driverPort: DriverPort, from: 'driver' | 'back-end'): Promise<void> {
  if (!requireLab(t, missingProgram('dpdk-testpmd', 'dpdk-dev'))) return;
  const dir = mkdtempSync(join(tmpdir(), 'dpdk-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'vhu.sock');
  const mode = (side: 'driver' | 'back-end') => (side === from ? 'txonly' : 'rxonly');
  // The two forwarding threads on different CPUs (lcore 1 for the back-end, 0 for the driver).
  const backend = await startTestpmd(
    { name: 'vhost', port: { kind: 'vhost', socketPath }, forwardMode: mode('back-end'), txPacketBytes: 64, lcores: { main: 0, forward: 1 } },
    t,
  );
  const driver = await startTestpmd(
    { name: 'virtio-user', port: { kind: 'virtio-user', socketPath, ...driverPort }, forwardMode: mode('driver'), txPacketBytes: 64, lcores: { main: 1, forward: 0 } },
    t,
  );
  const [sender, receiver] = from === 'driver' ? [driver, backend] : [backend, driver];

  await receiver.start();
  await sender.start();
  await receivedAtLeast(receiver, ENOUGH_PACKETS);
  const sent = await sender.stop();
  const received = await receiver.stop();
  const sentPort = await sender.portStats();
  const receivedPort = await receiver.portStats();
  t.diagnostic(`sender (${from}) forward stats ${JSON.stringify(sent)}; receiver forward stats ${JSON.stringify(received)}`);
  t.diagnostic(`sender port stats ${JSON.stringify(sentPort)}; receiver port stats ${JSON.stringify(receivedPort)}`);

  assert.ok(sent.txPackets >= ENOUGH_PACKETS, 'the sender put packets on the ring');
  assert.ok(received.rxPackets >= ENOUGH_PACKETS, 'the receiver took them off');
  // Whatever was on the ring but not yet taken when the receiver stopped is at most one ring.
  const inFlight = sent.txPackets - received.rxPackets;
  assert.ok(inFlight >= 0 && inFlight <= (driverPort.queueSize ?? 256), `${inFlight} packets in flight`);
  // Port counters agree with the forwarding engines' counts, byte counts with the frame size.
  assert.equal(sentPort.txPackets, sent.txPackets);
  assert.equal(receivedPort.rxPackets, received.rxPackets);
  assert.equal(receivedPort.rxBytes, received.rxPackets * 64);
  assert.equal(receivedPort.rxErrors, 0);
  // The ring layout and buffer merging are what the driver was told to offer.
  const features = backend.negotiatedFeatures();
  assert.ok(features !== undefined, 'the back-end logged the negotiated features');
  t.diagnostic(`negotiated features 0x${features.toString(16)}`);
  assert.equal(hasFeature(features, Feature.VERSION_1), true);
  assert.equal(hasFeature(features, Feature.RING_PACKED), driverPort.packedVq ?? false);
  assert.equal(hasFeature(features, VIRTIO_NET_F_MRG_RXBUF), driverPort.mrgRxbuf ?? true);
}

test('DPDK net_virtio_user (split ring, mergeable buffers) sends to net_vhost', (t) =>
  exchange(t, { queueSize: 256 }, 'driver'));

test('DPDK net_virtio_user (packed ring, no mergeable buffers, 1024 entries) sends to net_vhost', (t) =>
  exchange(t, { packedVq: true, mrgRxbuf: false, queueSize: 1024 }, 'driver'));

test('DPDK net_vhost sends into net_virtio_user receive buffers (split ring, mergeable buffers)', (t) =>
  exchange(t, { queueSize: 256 }, 'back-end'));
