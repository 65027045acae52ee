/**
 * paravirt's virtio-net driver, unchanged, over the vhost-user front-end against DPDK's
 * net_vhost in testpmd: a vhost-user-net back-end nobody here wrote, which implements only the
 * data path (no configuration space, no control queue), so the front-end plays QEMU's part of
 * the device (frontend-net.ts). testpmd counts what the driver sends (rxonly), sends what the
 * driver receives (txonly) and returns each frame as it came (io), on split and packed rings.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { NetDriver } from '../../src/devices/net/driver.ts';
import { ETH_HLEN, NetFeature } from '../../src/devices/net/wire.ts';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../../src/transports/vhost-user/constants.ts';
import { connectNet } from '../../src/transports/vhost-user/frontend-net.ts';
import { Feature, featureBit, hasFeature } from '../../src/virtio/constants.ts';
import { type ForwardMode, startTestpmd, type Testpmd } from '../lab/dpdk.ts';
import { missingProgram } from '../lab/peers-env.ts';
import { requireLab } from '../lab/require.ts';

const log = pino({ level: 'warn' });
/** testpmd's txonly frames and ours: 64 bytes, the minimum Ethernet frame with its FCS counted in. */
const FRAME_BYTES = 64;
const QUEUE_SIZE = 256;
/** Frames per direction: many times round the ring. */
const FRAMES = 20 * QUEUE_SIZE;
/** Sends in flight at once: twice the ring, so the driver also waits for ring room. */
const WINDOW = 2 * QUEUE_SIZE;
const EXPERIMENTAL_ETHERTYPE = 0x88b5;

interface Pair {
  readonly testpmd: Testpmd;
  readonly net: NetDriver;
}

/** testpmd's net_vhost in `mode` and the net driver connected to it through the front-end. */
async function connect(t: TestContext, mode: ForwardMode, packed: boolean): Promise<Pair | undefined> {
  if (!requireLab(t, missingProgram('dpdk-testpmd', 'dpdk-dev'))) return undefined;
  const dir = mkdtempSync(join(tmpdir(), 'fe-net-dpdk-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'vhost.sock');
  const testpmd = await startTestpmd({ name: `vhost-${mode}`, port: { kind: 'vhost', socketPath }, forwardMode: mode, txPacketBytes: FRAME_BYTES });
  // The driver goes first, so net_vhost sees an orderly reset rather than a hang-up.
  const opened: { net?: NetDriver } = {};
  t.after(async () => {
    await opened.net?.close();
    await testpmd.close();
  });
  const frontend = await connectNet(socketPath, { queueSize: QUEUE_SIZE, log });
  const offered = await frontend.deviceFeatures();
  t.diagnostic(`net_vhost offers device features 0x${offered.toString(16)}`);
  // DPDK's vhost library implements packed rings; if a build stopped offering them this test must say so, not pass on split.
  assert.equal(hasFeature(offered, Feature.RING_PACKED), true, 'net_vhost offers RING_PACKED');
  // Big enough that no frame is dropped for want of a reader: the test counts every one.
  const net = await NetDriver.open(frontend, { packed, inbox: 4 * FRAMES, log });
  opened.net = net;

  const negotiated = testpmd.negotiatedFeatures();
  assert.ok(negotiated !== undefined, 'net_vhost logged the negotiated features');
  // What net_vhost was told is what the driver accepted, plus the transport's PROTOCOL_FEATURES bit.
  assert.equal(negotiated & ~featureBit(VHOST_USER_F_PROTOCOL_FEATURES), net.features);
  assert.equal(hasFeature(net.features, Feature.VERSION_1), true);
  assert.equal(hasFeature(net.features, Feature.RING_PACKED), packed);
  // There is no control queue behind a vhost-user-net socket.
  for (const bit of [NetFeature.CTRL_VQ, NetFeature.MQ, NetFeature.MAC, NetFeature.STATUS]) assert.equal(hasFeature(net.features, bit), false);
  assert.equal(net.linkUp, true);
  return { testpmd, net };
}

/** A 64-byte broadcast frame from the driver carrying `n`. */
function frame(net: NetDriver, n: number): Uint8Array {
  const f = new Uint8Array(FRAME_BYTES);
  f.fill(0xff, 0, 6);
  f.set(net.mac, 6);
  new DataView(f.buffer).setUint16(12, EXPERIMENTAL_ETHERTYPE);
  new DataView(f.buffer).setUint32(14, n);
  for (let i = 18; i < FRAME_BYTES; i++) f[i] = (n + i) & 0xff;
  return f;
}

/** Sends frames 0..count-1 with WINDOW sends in flight; resolves when the device has taken them all. */
async function sendAll(net: NetDriver, count: number): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < count) await net.send(frame(net, next++));
  };
  await Promise.all(Array.from({ length: WINDOW }, lane));
}

/**
 * Frames 0..count-1 written straight into transmit buffers with trySendInPlace: the Ethernet
 * header only into a buffer this writer did not fill last, the rest of each frame every time.
 */
async function sendInPlace(net: NetDriver, count: number): Promise<void> {
  const header = frame(net, 0).subarray(0, ETH_HLEN);
  let n = 0;
  const write = (buffer: Uint8Array, _length: number, again: boolean): void => {
    if (!again) buffer.set(header);
    buffer.set(frame(net, n).subarray(ETH_HLEN), ETH_HLEN);
  };
  while (n < count) {
    if (net.trySendInPlace(FRAME_BYTES, write)) n++;
    else await net.whenWritable();
  }
}

/** Asks testpmd for its port counters until it has received `count` packets (every answer comes from testpmd, no clock involved). */
async function portReceived(testpmd: Testpmd, count: number): Promise<void> {
  for (let asked = 0; asked < 10_000; asked++) {
    if ((await testpmd.portStats()).rxPackets >= count) return;
  }
  throw new Error(`net_vhost never counted ${count} packets`);
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`net driver over the front-end sends to DPDK net_vhost (rxonly, ${ring} ring)`, async (t) => {
    const pair = await connect(t, 'rxonly', packed);
    if (pair === undefined) return;
    const { testpmd, net } = pair;
    await testpmd.start();
    await sendAll(net, FRAMES);
    // A send resolves once net_vhost has taken the frame off the ring; its count follows the burst.
    await portReceived(testpmd, FRAMES);
    const forwarded = await testpmd.stop();
    const port = await testpmd.portStats();
    t.diagnostic(`driver ${JSON.stringify(net.counters)}; testpmd forward ${JSON.stringify(forwarded)}, port ${JSON.stringify(port)}`);
    assert.equal(net.counters.txPackets, FRAMES);
    assert.equal(port.rxPackets, FRAMES);
    assert.equal(forwarded.rxPackets, FRAMES);
    assert.equal(port.rxBytes, FRAMES * FRAME_BYTES, 'net_vhost found each frame whole behind a 12-byte header');
    assert.equal(port.rxErrors + port.rxMissed, 0);
  });

  test(`net driver over the front-end receives what DPDK net_vhost sends (txonly, ${ring} ring)`, async (t) => {
    const pair = await connect(t, 'txonly', packed);
    if (pair === undefined) return;
    const { testpmd, net } = pair;
    await testpmd.start();
    for (let n = 0; n < FRAMES; n++) {
      const got = await net.next();
      assert.ok(got !== undefined);
      // testpmd's txonly frame: IPv4 (ethertype 0x0800) carrying UDP (protocol 17), 64 bytes.
      assert.equal(got.frame.length, FRAME_BYTES);
      assert.equal((got.frame[12] << 8) | got.frame[13], 0x0800);
      assert.equal(got.frame[14 + 9], 17);
    }
    const forwarded = await testpmd.stop();
    const port = await testpmd.portStats();
    // Everything net_vhost counted as sent is in the used ring: the driver takes the rest, ring by ring.
    assert.ok(port.txPackets >= FRAMES, `net_vhost sent ${port.txPackets}`);
    assert.equal(forwarded.txPackets, port.txPackets);
    while (net.counters.rxPackets < port.txPackets) await net.next();
    t.diagnostic(`driver ${JSON.stringify(net.counters)}; testpmd forward ${JSON.stringify(forwarded)}, port ${JSON.stringify(port)}`);
    assert.equal(net.counters.rxPackets, port.txPackets);
    assert.equal(net.counters.rxBytes, port.txBytes);
    assert.equal(net.counters.rxMalformed + net.counters.rxInboxFull, 0);
    // Frames net_vhost found no receive buffer for are its drops, not the driver's losses.
    t.diagnostic(`net_vhost dropped ${forwarded.txDropped} frames while every receive buffer was full`);
  });

  test(`DPDK net_vhost (io) returns every frame the net driver sends, copied or written in place, byte for byte (${ring} ring)`, async (t) => {
    const pair = await connect(t, 'io', packed);
    if (pair === undefined) return;
    const { testpmd, net } = pair;
    await testpmd.start();
    // Fewer than the driver has receive buffers, so none can be dropped on the way back.
    const count = QUEUE_SIZE / 2;
    for (let round = 0; round < 8; round++) {
      await (round % 2 === 0 ? sendAll(net, count) : sendInPlace(net, count));
      for (let n = 0; n < count; n++) {
        const got = await net.next();
        assert.ok(got !== undefined);
        assert.deepEqual(got.frame, frame(net, n));
      }
    }
    const forwarded = await testpmd.stop();
    assert.equal(forwarded.rxPackets, 8 * count);
    assert.equal(forwarded.txPackets, 8 * count);
    assert.equal(net.counters.rxPackets, 8 * count);
  });
}
