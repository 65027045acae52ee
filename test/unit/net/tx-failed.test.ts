/**
 * A transmit queue that failed (the device set DEVICE_NEEDS_RESET, the vhost-user back-end went
 * away) ends a sender: trySend(), trySendInPlace() and trySendBurst() throw one error naming the
 * queue and the reason, with nothing written and nothing counted sent, rather than find a free
 * buffer on every call and keep a sender's loop from ever yielding.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { NetDevice } from '../../../src/devices/net/device.ts';
import { type FrameWriter, NetDriver } from '../../../src/devices/net/driver.ts';
import { createCable } from '../../../src/devices/net/port.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { BackendServer } from '../../../src/transports/vhost-user/backend-server.ts';
import { connectNet } from '../../../src/transports/vhost-user/frontend-net.ts';
import { DeviceNeedsResetError } from '../../../src/virtio/driver-core.ts';
import { MAC_A, MAC_B, frame, log, until } from './fixture.ts';
import { serveOnSocket } from '../vhost-user-backend/serve-on-socket.ts';

const QUEUE_SIZE = 64;
const FAILED = /^Error: net: transmitq net\.q1 failed: net: device needs reset \(DEVICE_NEEDS_RESET\)/;

/** A driver over an mmio loopback whose device sends onto a cable; `arrived` counts frames out of the cable's far end. */
async function cabled(packed: boolean): Promise<{ drv: NetDriver; needsReset: () => void; arrived: () => number }> {
  const [port, far] = createCable();
  let arrived = 0;
  far.onReceive(() => void arrived++);
  const dev = new NetDevice({ port, mac: MAC_A });
  const { transport, host } = createLoopback(dev, { memoryBytes: 16 << 20, log });
  const drv = await NetDriver.open(transport, { log, packed, queueSize: QUEUE_SIZE });
  return { drv, needsReset: () => host.state.needsReset('net.q1', 'test', 'a fault the test made'), arrived: () => arrived };
}

/**
 * The sender loop trySendBurst's users write, as bench/frontend-net.ts does. Its writer refuses to
 * go on once it has written more frames than the device took plus every buffer there is: a driver
 * that kept handing out buffers of a failed queue makes the loop end with that error instead of
 * spinning for ever.
 */
async function senderLoop(drv: NetDriver, arrived: () => number, onFrame: (written: number) => void): Promise<void> {
  let written = 0;
  const write: FrameWriter = (buffer, length) => {
    if (++written > arrived() + 2 * QUEUE_SIZE) throw new Error(`the sender went on writing frames the device never took (${written} written, ${arrived()} arrived)`);
    buffer.set(frame(MAC_B, MAC_A, length, written & 0xff));
    onFrame(written);
  };
  for (;;) {
    while (drv.trySendBurst(32, 64, write) > 0);
    await drv.whenWritable();
  }
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`a sender looping on trySendBurst ends with the transmit queue's failure when the device needs a reset mid-run (${ring})`, async () => {
    const { drv, needsReset, arrived } = await cabled(packed);
    try {
      let broken = false;
      const sender = senderLoop(drv, arrived, (written) => {
        // Well into the run, with buffers in flight: the device breaks down.
        if (written === 1000 && !broken) {
          broken = true;
          needsReset();
        }
      });
      await assert.rejects(sender, FAILED);
      assert.ok(broken);
      const { txPackets, txFailed } = drv.counters;
      assert.ok(txPackets >= 1, 'frames went out before the failure');
      assert.ok(txPackets <= arrived(), 'only frames the device took count as sent');

      // Every way in refuses alike, writing and counting nothing.
      assert.throws(() => drv.trySendBurst(32, 64, () => assert.fail('not called')), FAILED);
      assert.throws(() => drv.trySendInPlace(64, () => assert.fail('not called')), FAILED);
      assert.throws(() => drv.trySend(frame(MAC_B, MAC_A, 64)), FAILED);
      // The error carries the queue's failure itself.
      assert.throws(
        () => drv.trySend(frame(MAC_B, MAC_A, 64)),
        (err: Error) => err.cause instanceof DeviceNeedsResetError,
      );
      // A sender waiting for room is let go, to hear of it on its next try.
      await drv.whenWritable();
      assert.equal(drv.counters.txPackets, txPackets, 'nothing more counted as sent');
      assert.equal(drv.counters.txFailed, txFailed, 'nothing more taken to be lost');
    } finally {
      await drv.close();
    }
  });
}

test('after DEVICE_NEEDS_RESET: trySend throws at once, send() rejects frame by frame, and close() says the driver is closed', async () => {
  const { drv, needsReset, arrived } = await cabled(false);
  try {
    const f = frame(MAC_B, MAC_A, 100);
    assert.equal(drv.trySend(f), true);
    await until(() => drv.counters.txPackets === 1);
    needsReset();
    // The driver hears of it through the configuration change notification.
    await until(() => drv.core.queue(1).failure !== undefined);
    assert.throws(() => drv.trySend(f), FAILED);
    assert.equal(drv.counters.txPackets, 1);
    assert.equal(drv.counters.txFailed, 0);
    assert.equal(arrived(), 1);
    // send() has each frame's request fail: a loop of sends ends at its first.
    await assert.rejects(async () => {
      for (;;) await drv.send(f);
    }, DeviceNeedsResetError);
    assert.equal(drv.counters.txPackets, 1);
  } finally {
    await drv.close();
  }
  assert.throws(() => drv.trySend(frame(MAC_B, MAC_A, 100)), /^Error: net: the driver is closed$/);
});

test('a ring fault found while a sender takes back used buffers throws before any buffer is taken (split)', async () => {
  const [port] = createCable();
  const dev = new NetDevice({ port, mac: MAC_A });
  const { transport, memory } = createLoopback(dev, { memoryBytes: 16 << 20, log });
  // The transmitq's used ring, and a way to keep the device from looking at the ring: it then
  // never writes the used ring, which this test writes instead, as a hostile device would.
  let used = 0;
  const enableQueue = transport.enableQueue.bind(transport);
  transport.enableQueue = (index, size, addrs) => {
    if (index === 1) used = addrs.device;
    return enableQueue(index, size, addrs);
  };
  let held = false;
  const notify = transport.notify.bind(transport);
  transport.notify = (index) => {
    if (!(held && index === 1)) notify(index);
  };
  const drv = await NetDriver.open(transport, { log, packed: false, queueSize: QUEUE_SIZE });
  try {
    held = true;
    const write: FrameWriter = (buffer, length) => buffer.set(frame(MAC_B, MAC_A, length));
    assert.equal(drv.trySendBurst(QUEUE_SIZE, 64, write), QUEUE_SIZE, 'every buffer in flight');
    // §2.7.8: a used element naming a descriptor beyond the ring, published by used->idx.
    const idx = memory.readU16(used + 2);
    memory.writeU32(used + 4 + 8 * (idx % QUEUE_SIZE), QUEUE_SIZE + 7);
    memory.writeU32(used + 8 + 8 * (idx % QUEUE_SIZE), 0);
    memory.writeU16(used + 2, (idx + 1) & 0xffff);
    // A later turn, when the sender may take back used buffers again (RequestQueue.reclaim).
    await Promise.resolve();
    assert.throws(
      () => drv.trySendBurst(1, 64, () => assert.fail('not called')),
      /^Error: net: transmitq net\.q1 failed: net\.q1: device broke the ring protocol/,
    );
    assert.equal(drv.counters.txPackets, 0);
    assert.equal(drv.counters.txFailed, QUEUE_SIZE, 'the frames in flight, and no more');
    assert.throws(() => drv.trySend(frame(MAC_B, MAC_A, 64)), /device broke the ring protocol/);
    assert.equal(drv.counters.txFailed, QUEUE_SIZE);
  } finally {
    await drv.close();
  }
});

const serve = (t: TestContext, device: NetDevice): { path: string; server: BackendServer } => serveOnSocket(t, device, log);

test('a vhost-user back-end that goes away mid-run ends a sender looping on trySendBurst with the transmit queue failed', async (t) => {
  const [port, far] = createCable();
  let arrived = 0;
  far.onReceive(() => void arrived++);
  const { path, server } = serve(t, new NetDevice({ port, mac: MAC_A }));
  const drv = await NetDriver.open(await connectNet(path, { log, memorySize: 4 << 20, queueSize: QUEUE_SIZE }), { log, queueSize: QUEUE_SIZE });
  try {
    let gone: Promise<void> | undefined;
    const sender = senderLoop(drv, () => arrived, (written) => {
      if (written === 1000) gone ??= server.close();
    });
    await assert.rejects(sender, /^Error: net: transmitq net\.q1 failed: net: device needs reset/);
    await gone;
    const { txPackets } = drv.counters;
    assert.throws(() => drv.trySendBurst(32, 64, () => assert.fail('not called')), /^Error: net: transmitq net\.q1 failed/);
    assert.equal(drv.counters.txPackets, txPackets);
  } finally {
    await drv.close();
  }
});
