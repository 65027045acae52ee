/**
 * DPDK's virtio-net driver (testpmd with net_virtio_user, the vhost-user front-end) against the
 * segment `paravirt serve net` runs (one switch, a NetDevice served by BackendServer), with and
 * without mergeable receive buffers. testpmd sending (txonly) must be
 * counted frame for frame on the switch; frames sent into the switch must be counted frame for
 * frame by testpmd (rxonly), every one either delivered or counted as a drop. The segment records
 * a pcap of what testpmd sent, which tshark must read back.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { openSegment } from '../../src/devices/net/segment.ts';
import { readPcap } from '../../src/devices/net/pcap.ts';
import { NO_OFFLOAD, NetFeature } from '../../src/devices/net/wire.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { Feature, hasFeature } from '../../src/virtio/constants.ts';
import { startTestpmd, type Testpmd, type TestpmdPort } from '../lab/dpdk.ts';
import { missingProgram } from '../lab/peers-env.ts';
import { requireLab } from '../lab/require.ts';

type DriverPort = Omit<Extract<TestpmdPort, { kind: 'virtio-user' }>, 'kind' | 'socketPath'>;

const FRAME_BYTES = 64;
/** What testpmd must send before it is stopped: many times round every ring. */
const TX_PACKETS = 5_000;
/** Frames sent into the switch towards testpmd, in bursts that yield to the event loop between them. */
const RX_PACKETS = 4_096;
const RX_BURST = 32;

/** Asks `read` again, through the event loop's timers phase (which waits for I/O), until `done` holds of its answer. */
async function until<T>(read: () => T | Promise<T>, done: (value: T) => boolean, what: string): Promise<T> {
  for (let asked = 0; asked < 100_000; asked++) {
    const value = await read();
    if (done(value)) return value;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  throw new Error(`never: ${what}`);
}

/** A broadcast Ethernet frame from a locally administered address, numbered in its payload. */
function frame(n: number): Uint8Array {
  const f = new Uint8Array(FRAME_BYTES);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0, 0, 0, 0, 0x01], 6);
  f.set([0x88, 0xb5], 12); // IEEE local experimental EtherType
  new DataView(f.buffer).setUint32(14, n);
  return f;
}

async function exchange(t: TestContext, driverPort: DriverPort, mode: 'txonly' | 'rxonly'): Promise<void> {
  if (!requireLab(t, missingProgram('dpdk-testpmd', 'dpdk-dev'))) return;
  const dir = mkdtempSync(join(tmpdir(), 'net-dpdk-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'net.sock');
  const pcap = join(dir, 'switch.pcap');
  const segment = await openSegment({ switchName: 'sw0', devices: 1, queuePairs: 1, pcap });
  const [device] = segment.devices;
  let negotiated: bigint | undefined;
  const activate = device.activate.bind(device);
  device.activate = (ctx) => {
    negotiated = ctx.features;
    activate(ctx);
  };
  // The test's own port on the switch: what it receives, testpmd sent.
  const probe = segment.switch.createPort('probe');
  let probed = 0;
  probe.onReceive(() => probed++);
  const server = BackendServer.listen(device, { socketPath }, pino({ level: process.env.PARAVIRT_LOG ?? 'warn' }));
  t.after(async () => {
    await server.close();
    probe.close();
    segment.close();
  });
  const testpmd: Testpmd = await startTestpmd(
    { name: 'paravirt-peer', port: { kind: 'virtio-user', socketPath, ...driverPort }, forwardMode: mode, txPacketBytes: FRAME_BYTES, lcores: { main: 1, forward: 0 } },
    t,
  );
  assert.ok(negotiated !== undefined, 'testpmd set the device up');
  assert.equal(hasFeature(negotiated, Feature.RING_PACKED), driverPort.packedVq ?? false);
  assert.equal(hasFeature(negotiated, NetFeature.MRG_RXBUF), driverPort.mrgRxbuf ?? true);

  await testpmd.start();
  if (mode === 'txonly') {
    await until(() => device.traffic.txPackets, (n) => n >= TX_PACKETS, `paravirt counted ${TX_PACKETS} frames`);
    const stats = await testpmd.stop();
    const port = await testpmd.portStats();
    assert.equal(port.txPackets, stats.txPackets);
    // Stopped, testpmd adds nothing more: the back-end drains what is left on the ring and then
    // has counted exactly what testpmd put there, and so has the switch port behind it.
    await until(() => device.traffic.txPackets, (n) => n === port.txPackets, `paravirt counted testpmd's ${port.txPackets} frames`);
    assert.equal(device.traffic.txBytes, port.txBytes);
    assert.equal(probed, port.txPackets);
    assert.equal(device.traffic.dropped, 0);
  } else {
    // A burst at a time, the next once the device has written the last into receive buffers
    // (or dropped some for want of one), so the device's backlog never overflows.
    const settled = (): number => device.traffic.rxPackets + device.traffic.drops.noBuffer;
    for (let n = 0; n < RX_PACKETS; n += RX_BURST) {
      for (let i = n; i < n + RX_BURST; i++) probe.send(frame(i), NO_OFFLOAD);
      await until(settled, (k) => k === n + RX_BURST, `frames up to ${n + RX_BURST} delivered or dropped: ${JSON.stringify(device.traffic)}`);
    }
    assert.equal(device.traffic.dropped, device.traffic.drops.noBuffer);
    const port = await until(() => testpmd.portStats(), (p) => p.rxPackets >= device.traffic.rxPackets, 'testpmd took every delivered frame');
    await testpmd.stop();
    assert.equal(port.rxPackets, device.traffic.rxPackets);
    assert.equal(port.rxBytes, device.traffic.rxBytes);
    t.diagnostic(`${port.rxPackets} of ${RX_PACKETS} frames delivered, ${device.traffic.drops.noBuffer} dropped for want of a buffer`);
    assert.ok(port.rxPackets > 0);
  }

  // Every frame that entered the switch through the segment's ports (the probe is the test's own)
  // is in the capture, readable by tshark and by readPcap.
  segment.close();
  const records = readPcap(readFileSync(pcap)).records;
  const entered = device.traffic.txPackets;
  assert.equal(records.length, entered);
  assert.ok(records.every((r) => r.data.length === FRAME_BYTES));
  if (missingProgram('tshark', 'tshark') === undefined) {
    const lines = execFileSync('tshark', ['-r', pcap, '-T', 'fields', '-e', 'frame.len'], { encoding: 'utf8', maxBuffer: 64 << 20 }).split('\n').filter((l) => l !== '');
    assert.equal(lines.length, entered);
    assert.ok(lines.every((l) => l === String(FRAME_BYTES)));
  }
}

test('DPDK net_virtio_user (split ring, mergeable buffers) sends to paravirt serve net', (t) => exchange(t, {}, 'txonly'));

test('DPDK net_virtio_user (split ring, mergeable buffers) receives from the paravirt switch', (t) => exchange(t, {}, 'rxonly'));

test('DPDK net_virtio_user (split ring, no mergeable buffers) sends to paravirt serve net', (t) =>
  exchange(t, { mrgRxbuf: false }, 'txonly'));

test('DPDK net_virtio_user (split ring, no mergeable buffers) receives from the paravirt switch', (t) =>
  exchange(t, { mrgRxbuf: false }, 'rxonly'));

test('DPDK net_virtio_user (packed ring, mergeable buffers) sends to paravirt serve net', (t) =>
  exchange(t, { packedVq: true }, 'txonly'));

test('DPDK net_virtio_user (packed ring, no mergeable buffers) receives from the paravirt switch', (t) =>
  exchange(t, { packedVq: true, mrgRxbuf: false }, 'rxonly'));
