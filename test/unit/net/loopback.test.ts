import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { FrameWriter } from '../../../src/devices/net/driver.ts';
import { createCable } from '../../../src/devices/net/port.ts';
import { L2Switch } from '../../../src/devices/net/switch.ts';
import { NO_OFFLOAD, formatMac } from '../../../src/devices/net/wire.ts';
import { Feature, hasFeature } from '../../../src/virtio/constants.ts';
import { RECLAIMS_PER_TURN } from '../../../src/virtio/request-queue.ts';
import { MAC_A, MAC_B, frame, nextFrame, station, until } from './fixture.ts';

const MAC_E = '52:54:00:00:00:0e';
/**
 * Frames a sender through a 16-entry ring cannot send in one turn: a device here uses each buffer
 * as it is kicked, and the sender takes used ones back RECLAIMS_PER_TURN times a turn.
 */
const MORE_THAN_A_TURN = 16 * (RECLAIMS_PER_TURN + 2);
/** A receiving driver's ring that holds all of them, so that none is dropped before it reads them. */
const RECEIVE_RING = 512;
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

test('a bridge transmits every frame lent to it, in order, past a full transmit ring', async () => {
  const [devSide, wire] = createCable('wire');
  const e = await station(devSide, { mac: MAC_E }, { queueSize: 16 });
  const [bridged, feeder] = createCable('feed');
  const fromWire: Uint8Array[] = [];
  wire.onReceive((f) => fromWire.push(f.slice()));
  try {
    await e.drv.bridge(bridged);
    // One buffer lent for every frame and rewritten after each call, as port.ts allows: the
    // bridge copies what it cannot transmit at once.
    const lent = new Uint8Array(128);
    const frames = Array.from({ length: 40 }, (_, i) => frame(MAC_X, MAC_A, 64 + i, i));
    for (const f of frames) {
      lent.set(f);
      feeder.send(lent.subarray(0, f.length), NO_OFFLOAD);
      lent.fill(0);
    }
    await until(() => fromWire.length === frames.length);
    assert.deepEqual(fromWire, frames);
    assert.equal(e.drv.counters.txFailed, 0);
  } finally {
    await e.drv.close();
  }
});

test('trySend fills every transmit buffer without waiting, refuses when none is free, and whenWritable says when to go on', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort('a'), { mac: MAC_A }, { queueSize: 16, pollMicros: 200 });
  const b = await station(sw.createPort('b'), { mac: MAC_B }, { queueSize: RECEIVE_RING });
  try {
    const frames = Array.from({ length: MORE_THAN_A_TURN }, (_, i) => frame(MAC_B, MAC_A, 64 + (i % 64), i & 0xff));
    let sent = 0;
    let refused = 0;
    while (sent < frames.length) {
      if (a.drv.trySend(frames[sent])) sent++;
      else {
        refused++;
        await a.drv.whenWritable();
      }
    }
    assert.ok(refused > 0, `a ring of 16 cannot take ${frames.length} frames in one turn`);
    for (const f of frames) assert.deepEqual((await nextFrame(b.drv)).frame, f);
    await until(() => a.drv.counters.txPackets === frames.length);
    assert.equal(a.drv.counters.txFailed, 0);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

for (const packed of [false, true]) {
  test(`trySendBurst: a burst takes what is free up to its count, frames go out in the order written, and a writer that throws sends none of the burst (${packed ? 'packed' : 'split'})`, async () => {
    const sw = new L2Switch();
    const a = await station(sw.createPort('a'), { mac: MAC_A }, { packed, queueSize: 16, pollMicros: 200 });
    const b = await station(sw.createPort('b'), { mac: MAC_B }, { queueSize: RECEIVE_RING });
    try {
      let seq = 0;
      const buffers = new Set<Uint8Array>();
      const write = (buffer: Uint8Array, length: number): void => {
        buffers.add(buffer);
        buffer.set(frame(MAC_B, MAC_A, length, seq++ & 0xff));
      };
      // Frames in bursts of 6 through a ring of 16: bursts cut short, or refused, when all are in flight.
      const total = MORE_THAN_A_TURN;
      let sent = 0;
      let short = 0;
      while (sent < total) {
        const n = a.drv.trySendBurst(Math.min(6, total - sent), 80, write);
        assert.ok(n >= 0 && n <= 6);
        if (n < Math.min(6, total - sent)) short++;
        sent += n;
        if (n === 0) await a.drv.whenWritable();
      }
      assert.equal(seq, total, 'the writer ran once per frame sent');
      assert.ok(short > 0, `a ring of 16 cannot take ${total} frames in one turn`);
      assert.ok(buffers.size <= 16, `at most one buffer per ring entry, not ${buffers.size}`);
      for (let i = 0; i < total; i++) assert.deepEqual((await nextFrame(b.drv)).frame, frame(MAC_B, MAC_A, 80, i & 0xff), `frame ${i}`);
      await until(() => a.drv.counters.txPackets === total);

      // A writer failing at its third frame: nothing of the burst goes out, and every buffer is free again.
      const broken = new Error('the writer broke');
      let calls = 0;
      assert.throws(
        () =>
          a.drv.trySendBurst(5, 80, (buffer, length) => {
            if (++calls === 3) throw broken;
            buffer.set(frame(MAC_B, MAC_A, length, 0xee));
          }),
        (err) => err === broken,
      );
      assert.equal(calls, 3);
      assert.throws(() => a.drv.trySendBurst(2, 80, () => a.drv.trySendInPlace(80, write)), /a frame writer cannot write frames itself/);
      assert.equal(a.drv.trySendBurst(16, 80, write), 16, 'all 16 buffers are free again');
      for (let i = total; i < total + 16; i++) assert.deepEqual((await nextFrame(b.drv)).frame, frame(MAC_B, MAC_A, 80, i & 0xff), `frame ${i}`);
      await until(() => a.drv.counters.txPackets === total + 16);

      // The same frame area as `fields`: a frame written a word at a time arrives as written.
      const byWords = frame(MAC_B, MAC_A, 80, 0x77);
      const words = new DataView(byWords.buffer, byWords.byteOffset, byWords.length);
      const writeWords: FrameWriter = (_buffer, length, _again, fields) => {
        for (let i = 0; i < length; i += 4) fields.setUint32(i, words.getUint32(i));
      };
      assert.equal(a.drv.trySendBurst(1, 80, writeWords), 1);
      assert.deepEqual((await nextFrame(b.drv)).frame, byWords);
      assert.equal(a.drv.counters.txFailed, 0);

      for (const count of [0, 17, 2.5, Number.NaN]) {
        assert.throws(() => a.drv.trySendBurst(count, 80, () => assert.fail('not called')), /a burst of .* frames is outside 1\.\.16/);
      }
      assert.throws(() => a.drv.trySendBurst(4, 10, () => assert.fail('not called')), /a frame of 10 bytes is outside 14\.\.1518 bytes/);
    } finally {
      await a.drv.close();
      await b.drv.close();
    }
  });
}

test('trySendInPlace: frames written straight into transmit buffers arrive whole, a buffer still holds the last frame its writer wrote, and a writer that throws sends nothing', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort('a'), { mac: MAC_A }, { queueSize: 16, pollMicros: 200 });
  const b = await station(sw.createPort('b'), { mac: MAC_B });
  try {
    // A template written whole into a buffer the writer did not fill last, then only its last
    // byte (a sequence number) per frame: what a sender that rewrites the varying bytes does.
    const template = frame(MAC_B, MAC_A, 100, 5);
    let seq = 0;
    let whole = 0;
    const write = (buffer: Uint8Array, length: number, again: boolean): void => {
      assert.equal(length, template.length);
      assert.ok(buffer.length >= length, 'the buffer holds the frame');
      if (again) {
        assert.deepEqual(buffer.subarray(0, length - 1), template.subarray(0, length - 1), 'the buffer holds the frame this writer wrote last');
      } else {
        buffer.set(template);
        whole++;
      }
      buffer[length - 1] = seq & 0xff;
    };
    /** Send `count` frames with `write`, waiting for buffers; returns how many times every buffer was in flight. */
    const sendAll = async (count: number): Promise<number> => {
      let refused = 0;
      for (let i = 0; i < count; ) {
        if (a.drv.trySendInPlace(template.length, write)) {
          i++;
          seq++;
        } else {
          refused++;
          await a.drv.whenWritable();
        }
      }
      return refused;
    };
    const expectFrames = async (from: number, count: number): Promise<void> => {
      for (let i = from; i < from + count; i++) {
        const expected = template.slice();
        expected[expected.length - 1] = i & 0xff;
        const got = await nextFrame(b.drv);
        assert.deepEqual(got.frame, expected, `frame ${i}`);
        assert.deepEqual(got.meta, NO_OFFLOAD, 'the virtio_net_hdr says: no offload');
      }
    };
    assert.ok((await sendAll(40)) > 0, 'a ring of 16 cannot take 40 frames at once');
    await expectFrames(0, 40);
    assert.ok(whole >= 1 && whole <= 16, `the template is written whole once per transmit buffer (at most 16), not ${whole} times`);
    await until(() => a.drv.counters.txPackets === 40);

    // Frames copied in with trySend() into all 16 buffers at once replace the writer's in every
    // one: it writes whole again.
    const copied = Array.from({ length: 16 }, (_, i) => frame(MAC_B, MAC_A, 64, i));
    for (const f of copied) assert.ok(a.drv.trySend(f), 'every buffer is free');
    for (const f of copied) assert.deepEqual((await nextFrame(b.drv)).frame, f);
    await until(() => a.drv.counters.txPackets === 56);
    whole = 0;
    await sendAll(16);
    await expectFrames(40, 16);
    assert.equal(whole, 16, 'no buffer held the writer\'s frame after trySend() copies');

    const broken = new Error('the writer broke');
    assert.throws(
      () =>
        a.drv.trySendInPlace(64, () => {
          throw broken;
        }),
      (err) => err === broken,
    );
    assert.throws(() => a.drv.trySendInPlace(10, () => assert.fail('not called')), /a frame of 10 bytes is outside 14\.\.1518 bytes/);
    assert.throws(() => a.drv.trySendInPlace(64.5, () => assert.fail('not called')), /a frame of 64\.5 bytes is outside 14\.\.1518 bytes/);
    // The buffer the broken writer had is free again: a full ring's worth still goes out.
    await until(() => a.drv.counters.txPackets === 72);
    for (let i = 0; i < 16; i++) {
      const f = frame(MAC_B, MAC_A, 64, i);
      while (!a.drv.trySendInPlace(f.length, (buffer) => buffer.set(f))) await a.drv.whenWritable();
      assert.deepEqual((await nextFrame(b.drv)).frame, f);
    }
    await until(() => a.drv.counters.txPackets === 88);
    assert.equal(a.drv.counters.txFailed, 0);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});
