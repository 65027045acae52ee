/**
 * The net driver over the vhost-user front-end against paravirt's own net back-end run as a user
 * runs it, `paravirt serve net`, in its own process: two drivers on two sockets of one switch
 * exchange frames, the halves of this project meeting only through the protocol. Unlike DPDK's
 * net_vhost this back-end is a whole device (configuration space, control queue), so the
 * front-end passes it through and the control queue, MAC and multiqueue come from it.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { NetDriver } from '../../src/devices/net/driver.ts';
import { NetFeature, formatMac } from '../../src/devices/net/wire.ts';
import { connectNet } from '../../src/transports/vhost-user/frontend-net.ts';
import { Feature, hasFeature } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const log = pino({ level: 'warn' });
const FIRST_MAC = '52:54:00:12:34:56';
const SECOND_MAC = '52:54:00:12:34:57';
const EXPERIMENTAL_ETHERTYPE = 0x88b5;

/** A driver over the front-end on each of two sockets of one `paravirt serve net` switch. */
async function serveNet(t: TestContext, queues: number, packed: boolean): Promise<[NetDriver, NetDriver]> {
  const dir = mkdtempSync(join(tmpdir(), 'fe-net-paravirt-'));
  const sockets = [join(dir, 'a.sock'), join(dir, 'b.sock')];
  const args = ['serve', 'net', '--mac', FIRST_MAC, '--queues', String(queues), ...sockets.flatMap((s) => ['--socket-path', s])];
  const backend = new PeerProcess('paravirt serve net', [process.execPath, PARAVIRT, ...args], { textStdout: true });
  const drivers: NetDriver[] = [];
  // The drivers go first, so the back-end sees orderly resets rather than reading a closed socket.
  t.after(async () => {
    for (const net of drivers) await net.close();
    await backend.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  for (const socket of sockets) {
    await backend.waitForOutput(new RegExp(`${socket.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}.*vhost-user back-end listening`), 0, `listening on ${socket}`);
  }
  for (const socket of sockets) drivers.push(await NetDriver.open(await connectNet(socket, { log }), { packed, log }));
  return [drivers[0], drivers[1]];
}

/** A frame from `from` to `to` carrying `n`. */
function frame(from: NetDriver, to: NetDriver, n: number, bytes = 64): Uint8Array {
  const f = new Uint8Array(bytes);
  f.set(to.mac, 0);
  f.set(from.mac, 6);
  new DataView(f.buffer).setUint16(12, EXPERIMENTAL_ETHERTYPE);
  for (let i = 14; i < bytes; i++) f[i] = (n * 7 + i) & 0xff;
  return f;
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`two net drivers over the front-end exchange frames through \`paravirt serve net\` (${ring})`, async (t) => {
    const [first, second] = await serveNet(t, 1, packed);
    // A whole device: the front-end passes its configuration space and control queue through.
    for (const net of [first, second]) {
      assert.equal(hasFeature(net.features, Feature.RING_PACKED), packed);
      assert.equal(hasFeature(net.features, NetFeature.CTRL_VQ), true);
      assert.equal(net.linkUp, true);
    }
    assert.equal(formatMac(first.mac), FIRST_MAC);
    assert.equal(formatMac(second.mac), SECOND_MAC);
    // Sizes from the smallest frame to the MTU's; the switch learns each address from its first frame.
    const sizes = [60, 64, 128, 1000, 1514];
    for (const [n, bytes] of sizes.entries()) {
      const there = frame(first, second, n, bytes);
      await first.send(there);
      assert.deepEqual((await second.next())?.frame, there);
      const back = frame(second, first, n, bytes);
      await second.send(back);
      assert.deepEqual((await first.next())?.frame, back);
    }
    // The control queue reaches paravirt's device: without promiscuous mode a frame for another address stays out.
    await second.send(frame(second, first, 99));
    const stranger = frame(second, first, 100);
    stranger.set([0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc], 0);
    await second.send(stranger);
    const last = frame(second, first, 101);
    await second.send(last);
    assert.deepEqual((await first.next())?.frame, frame(second, first, 99));
    assert.deepEqual((await first.next())?.frame, last, 'the frame for another address was filtered out');
    assert.equal(first.pending, 0);
  });

  test(`net driver over the front-end uses two queue pairs of \`paravirt serve net --queues 2\` (${ring})`, async (t) => {
    const [first, second] = await serveNet(t, 2, packed);
    assert.equal(first.maxQueuePairs, 2);
    await first.setQueuePairs(2);
    await second.setQueuePairs(2);
    const frames = Array.from({ length: 64 }, (_, n) => frame(first, second, n));
    await Promise.all(frames.map((f, n) => first.send(f, { pair: n % 2 })));
    const got = [];
    for (let n = 0; n < frames.length; n++) got.push((await second.next())?.frame);
    // Frames of two queues may interleave: compare as sets, each exactly once.
    const key = (f: Uint8Array | undefined): string => Buffer.from(f ?? []).toString('hex');
    assert.deepEqual(got.map(key).sort(), frames.map(key).sort());
    assert.equal(first.counters.txPackets, frames.length);
  });
}
