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
  throw new Error(`the back-end never received ${count} packets`);
}

async function txonlyToRxonly(t: TestContext, guestPort: Omit<Extract<TestpmdPort, { kind: 'virtio-user' }>, 'kind' | 'socketPath'>): Promise<void> {
  if (!requireLab(t, missingProgram('dpdk-testpmd', 'dpdk-dev'))) return;
  const dir = mkdtempSync(join(tmpdir(), 'dpdk-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'vhu.sock');
  // The two forwarding threads on different CPUs (lcore 1 for the back-end, 0 for the driver).
  const backend = await startTestpmd({ name: 'vhost', port: { kind: 'vhost', socketPath }, forwardMode: 'rxonly', lcores: { main: 0, forward: 1 } }, t);
  const driver = await startTestpmd(
    { name: 'virtio-user', port: { kind: 'virtio-user', socketPath, ...guestPort }, forwardMode: 'txonly', txPacketBytes: 64, lcores: { main: 1, forward: 0 } },
    t,
  );

  await backend.start();
  await driver.start();
  await receivedAtLeast(backend, ENOUGH_PACKETS);
  const sent = await driver.stop();
  const received = await backend.stop();
  const sentPort = await driver.portStats();
  const receivedPort = await backend.portStats();
  t.diagnostic(`driver forward stats ${JSON.stringify(sent)}; back-end forward stats ${JSON.stringify(received)}`);
  t.diagnostic(`driver port stats ${JSON.stringify(sentPort)}; back-end port stats ${JSON.stringify(receivedPort)}`);

  assert.ok(sent.txPackets >= ENOUGH_PACKETS, 'the driver put packets on its transmit queue');
  assert.ok(received.rxPackets >= ENOUGH_PACKETS, 'the back-end took them off');
  // Whatever the driver had queued but the back-end not yet taken when it stopped is at most one ring.
  const inFlight = sent.txPackets - received.rxPackets;
  assert.ok(inFlight >= 0 && inFlight <= (guestPort.queueSize ?? 256), `${inFlight} packets in flight`);
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
  assert.equal(hasFeature(features, Feature.RING_PACKED), guestPort.packedVq ?? false);
  assert.equal(hasFeature(features, VIRTIO_NET_F_MRG_RXBUF), guestPort.mrgRxbuf ?? true);
}

test('DPDK net_virtio_user (split ring, mergeable buffers) sends to net_vhost: txonly -> rxonly', (t) =>
  txonlyToRxonly(t, { queueSize: 256 }));

test('DPDK net_virtio_user (packed ring, no mergeable buffers, 1024 entries) sends to net_vhost', (t) =>
  txonlyToRxonly(t, { packedVq: true, mrgRxbuf: false, queueSize: 1024 }));
