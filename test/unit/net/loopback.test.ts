import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCable } from '../../../src/devices/net/port.ts';
import { L2Switch } from '../../../src/devices/net/switch.ts';
import { NO_OFFLOAD, formatMac } from '../../../src/devices/net/wire.ts';
import { Feature, hasFeature } from '../../../src/virtio/constants.ts';
import { MAC_A, MAC_B, frame, nextFrame, station, until } from './fixture.ts';

const MAC_E = '52:54:00:00:00:0e';
const MAC_X = '52:54:00:00:00:99';

for (const [packed, inOrder] of [[false, false], [true, false], [false, true], [true, true]]) {
  const ring = `${packed ? 'packed' : 'split'}${inOrder ? ', in order' : ''}`;

  test(`two drivers on one switch exchange frames (${ring})`, async () => {
    const sw = new L2Switch();
    const a = await station(sw.createPort('a'), { mac: MAC_A, features: { inOrder } }, { packed });
    const b = await station(sw.createPort('b'), { mac: MAC_B, features: { inOrder } }, { packed });
    try {
      assert.equal(hasFeature(a.drv.features, Feature.RING_PACKED), packed);
      assert.equal(hasFeature(a.drv.features, Feature.IN_ORDER), inOrder);
      assert.equal(formatMac(a.drv.mac), MAC_A);
      const small = frame(MAC_B, MAC_A, 64, 1);
      const big = frame(MAC_B, MAC_A, 1514, 2);
      await a.drv.send(small);
      await a.drv.send(big);
      assert.deepEqual((await nextFrame(b.drv)).frame, small);
      assert.deepEqual((await nextFrame(b.drv)).frame, big);
      const reply = frame(MAC_A, MAC_B, 100, 3);
      await b.drv.send(reply);
      assert.deepEqual((await nextFrame(a.drv)).frame, reply);
      assert.equal(a.dev.traffic.txPackets, 2);
      assert.equal(b.dev.traffic.rxPackets, 2);
      assert.equal(b.dev.traffic.rxBytes, 64 + 1514);
    } finally {
      await a.drv.close();
      await b.drv.close();
    }
  });
}

test('a driver bridged into a switch carries frames both ways between the switch and its device', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort('a'), { mac: MAC_A });
  const [devSide, wire] = createCable('wire');
  const e = await station(devSide, { mac: MAC_E });
  const fromWire: Uint8Array[] = [];
  wire.onReceive((f) => fromWire.push(f));
  try {
    await e.drv.bridge(sw.createPort('bridge'));
    const out = frame(MAC_X, MAC_A, 300, 1);
    await a.drv.send(out);
    await until(() => fromWire.length === 1);
    assert.deepEqual(fromWire, [out], 'flooded to the bridge, transmitted by its device');
    const back = frame(MAC_A, MAC_X, 200, 2);
    wire.send(back, NO_OFFLOAD);
    assert.deepEqual((await nextFrame(a.drv)).frame, back, 'received in promiscuous mode and sent into the switch');
  } finally {
    await a.drv.close();
    await e.drv.close();
  }
});

test('trySend fills every transmit buffer without waiting, refuses when none is free, and whenWritable says when to go on', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort('a'), { mac: MAC_A }, { queueSize: 16, pollMicros: 200 });
  const b = await station(sw.createPort('b'), { mac: MAC_B });
  try {
    const frames = Array.from({ length: 40 }, (_, i) => frame(MAC_B, MAC_A, 64 + i, i));
    let sent = 0;
    let refused = 0;
    while (sent < frames.length) {
      if (a.drv.trySend(frames[sent])) sent++;
      else {
        refused++;
        await a.drv.whenWritable();
      }
    }
    assert.ok(refused > 0, 'a ring of 16 cannot take 40 frames at once');
    for (const f of frames) assert.deepEqual((await nextFrame(b.drv)).frame, f);
    await until(() => a.drv.counters.txPackets === frames.length);
    assert.equal(a.drv.counters.txFailed, 0);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});
