/**
 * `paravirt serve net` as a user runs it, in its own process, with two sockets on one switch:
 * paravirt's net driver over the vhost-user front-end on each socket, the two meeting only
 * through the protocol and the switch. Frames cross both ways, the device's configured address
 * reaches the driver, the capture holds every frame that entered the switch, and SIGTERM ends
 * the command with code 0.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { NetDriver } from '../../src/devices/net/driver.ts';
import { readPcap } from '../../src/devices/net/pcap.ts';
import { formatMac } from '../../src/devices/net/wire.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId, Feature, hasFeature } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const log = pino({ level: 'warn' });
const FRAMES = 200;

/** An Ethernet frame from `src` to `dst` carrying its number. */
function frame(dst: Uint8Array, src: Uint8Array, n: number): Uint8Array {
  const f = new Uint8Array(60 + (n % 1000));
  f.set(dst, 0);
  f.set(src, 6);
  f.set([0x88, 0xb5], 12);
  new DataView(f.buffer).setUint32(14, n);
  return f;
}

for (const packed of [false, true]) {
  test(`two net drivers on two sockets of one \`paravirt serve net\` reach each other (${packed ? 'packed' : 'split'} rings)`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'net-serve-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const [a, b] = [join(dir, 'a.sock'), join(dir, 'b.sock')];
    const pcap = join(dir, 'lan.pcap');
    const args = ['serve', 'net', '--switch', 'lan', '--socket-path', a, '--socket-path', b, '--mac', '52:54:00:aa:00:fe', '--pcap', pcap];
    const server = new PeerProcess('paravirt serve net', [process.execPath, PARAVIRT, ...args], { textStdout: true });
    t.after(() => server.stop());
    await server.waitForOutput(/b\.sock","msg":"vhost-user back-end listening/, 0, 'listening on both sockets');

    const open = async (socketPath: string): Promise<NetDriver> =>
      NetDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.NET, log }), { log, packed });
    const left = await open(a);
    const right = await open(b);
    assert.equal(hasFeature(left.features, Feature.RING_PACKED), packed);
    // --mac is the first device's address; the second counts up from it, across a byte boundary.
    assert.equal(formatMac(left.mac), '52:54:00:aa:00:fe');
    assert.equal(formatMac(right.mac), '52:54:00:aa:00:ff');
    assert.equal(left.linkUp, true);

    const sent: Uint8Array[] = [];
    for (let n = 0; n < FRAMES; n++) {
      const [from, to] = n % 2 === 0 ? [left, right] : [right, left];
      const f = frame(to.mac, from.mac, n);
      sent.push(f);
      await from.send(f);
      const got = await to.next();
      assert.deepEqual(got?.frame, f, `frame ${n} arrived whole at the other driver`);
    }
    await left.close();
    await right.close();

    const exit = await server.stop();
    assert.equal(exit.code, 0, 'SIGTERM ends the command with code 0');
    const records = readPcap(readFileSync(pcap)).records;
    assert.deepEqual(records.map((r) => r.data), sent, 'the capture holds every frame, once, in order');
  });
}
