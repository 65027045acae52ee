import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { patch } from '../../../src/devices/net/port.ts';
import { L2Switch } from '../../../src/devices/net/switch.ts';
import { UdpTunnel } from '../../../src/devices/net/tunnel.ts';
import { GsoType, HdrFlag, type Offload } from '../../../src/devices/net/wire.ts';
import { MAC_A, MAC_B, frame, nextFrame, station } from './fixture.ts';

test('a UDP tunnel joins two switches: drivers on either side exchange frames, offload metadata included', async () => {
  const left = new L2Switch({ name: 'left' });
  const right = new L2Switch({ name: 'right' });
  const t1 = await UdpTunnel.open({ name: 't1' });
  const t2 = await UdpTunnel.open({ name: 't2', peer: t1.local });
  t1.setPeer(t2.local);
  patch(left.createPort('uplink'), t1);
  patch(right.createPort('uplink'), t2);
  const a = await station(left.createPort(), { mac: MAC_A });
  const b = await station(right.createPort(), { mac: MAC_B });
  try {
    const f = frame(MAC_B, MAC_A, 1514, 1);
    await a.drv.send(f);
    assert.deepEqual((await nextFrame(b.drv)).frame, f);
    const meta: Offload = { flags: HdrFlag.NEEDS_CSUM, gsoType: GsoType.TCPV4, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 };
    const big = frame(MAC_A, MAC_B, 30000, 2);
    await b.drv.send(big, { meta });
    const got = await nextFrame(a.drv);
    assert.deepEqual(got.frame, big);
    assert.deepEqual(got.meta, meta);
    assert.equal(t1.counters.txPackets, 1);
    assert.equal(t1.counters.rxPackets, 1);
    assert.equal(t2.counters.rxBytes, 1514);
  } finally {
    await a.drv.close();
    await b.drv.close();
    t1.close();
    t2.close();
  }
});

test('a tunnel drops datagrams from anyone but its peer and ones too short to hold a frame', async () => {
  const t1 = await UdpTunnel.open();
  const t2 = await UdpTunnel.open({ peer: t1.local });
  t1.setPeer(t2.local);
  const got: Uint8Array[] = [];
  t1.onReceive((f) => got.push(f));
  const stranger = createSocket('udp4');
  try {
    const send = (sock: { send: (m: Uint8Array, port: number, addr: string, cb: () => void) => void }, bytes: Uint8Array): Promise<void> =>
      new Promise((resolve) => sock.send(bytes, t1.local.port, '127.0.0.1', resolve));
    await send(stranger, new Uint8Array(100));
    // The peer's short datagram, then a good frame: once the good one arrives, both earlier ones were judged.
    const good = frame(MAC_A, MAC_B, 64);
    t2.send(new Uint8Array(4), { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 });
    t2.send(good, { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 });
    await new Promise<void>((resolve) => t1.onReceive((f) => (got.push(f), resolve())));
    assert.deepEqual(got, [good]);
    assert.equal(t1.counters.drops, 2);
    assert.throws(() => t1.setPeer({ address: '127.0.0.1', port: 0 }), /peer port 0 is not an integer from 1 to 65535/);
    await assert.rejects(UdpTunnel.open({ local: { address: '192.0.2.1' } }), /UDP tunnel cannot bind 192\.0\.2\.1:0/);
  } finally {
    stranger.close();
    t1.close();
    t2.close();
  }
});
