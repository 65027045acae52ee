import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NetDriver } from '../../../src/devices/net/driver.ts';
import { NET_HDR_SIZE, NetFeature, NET_CONFIG, encodeNetHeader, NO_OFFLOAD, parseMac } from '../../../src/devices/net/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { ChainWriter } from '../../../src/virtio/chain-io.ts';
import { DeviceId, featureBit } from '../../../src/virtio/constants.ts';
import type { DeviceContext, VirtioDevice } from '../../../src/virtio/device.ts';
import { MAC_A, MAC_B, frame, log, nextFrame, until } from './fixture.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';

/** A device that writes whatever the test says into the driver's receive buffers. */
class HostileNet implements VirtioDevice {
  readonly deviceId = DeviceId.NET;
  readonly name = 'hostile-net';
  readonly numQueues: number;
  readonly maxQueueSize = 64;
  readonly features: bigint;
  readonly config: Uint8Array;
  readonly counters: DeviceCounters;
  ctx: DeviceContext | undefined;

  constructor(features: bigint, maxVirtqueuePairs = 1) {
    this.features = features;
    this.numQueues = 2 * Math.max(1, maxVirtqueuePairs) + 1;
    this.counters = new DeviceCounters(this.numQueues);
    this.config = NET_CONFIG.encode({ mac: parseMac(MAC_A), status: 0, maxVirtqueuePairs, mtu: 1500, speed: 0, duplex: 0 });
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
  }

  queueNotify(): void {}

  reset(): void {
    this.ctx = undefined;
  }

  /** Whether the driver has started the device (receive queue live). */
  running(): boolean {
    return this.ctx?.queue(0) !== undefined;
  }

  /** Write `bytes` into the next posted receive buffer and return it used. */
  fill(bytes: Uint8Array): void {
    const ctx = this.ctx!;
    const q = ctx.queue(0)!;
    const chain = q.pop();
    assert.ok(chain !== null, 'the driver keeps receive buffers posted');
    const w = new ChainWriter(chain);
    w.write(bytes);
    q.push(chain, w.written);
    if (q.publish()) ctx.notifyQueue(0);
  }
}

function withHeader(numBuffers: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(NET_HDR_SIZE + body.length);
  encodeNetHeader(NO_OFFLOAD, numBuffers, out);
  out.set(body, NET_HDR_SIZE);
  return out;
}

test('a hostile device: short buffers and impossible num_buffers are dropped and counted; reassembly still works', async () => {
  const dev = new HostileNet(featureBit(NetFeature.MRG_RXBUF) | featureBit(NetFeature.MAC));
  const { transport } = createLoopback(dev, { memoryBytes: 4 << 20, log });
  const drv = await NetDriver.open(transport);
  try {
    await until(() => dev.running());
    dev.fill(new Uint8Array(4));
    dev.fill(withHeader(0, frame(MAC_A, MAC_B, 60)));
    dev.fill(withHeader(1000, frame(MAC_A, MAC_B, 60)));
    dev.fill(withHeader(1, new Uint8Array(10)));
    const good = frame(MAC_A, MAC_B, 1000, 3);
    dev.fill(withHeader(2, good.subarray(0, 400)));
    dev.fill(good.subarray(400));
    const got = await nextFrame(drv);
    assert.deepEqual(got.frame, good);
    assert.equal(drv.counters.rxMalformed, 4);
    assert.equal(drv.counters.rxPackets, 1);
  } finally {
    await drv.close();
  }
});

test('a device reporting an impossible max_virtqueue_pairs is refused with the value named', async () => {
  const features = featureBit(NetFeature.MQ) | featureBit(NetFeature.CTRL_VQ);
  const dev = new HostileNet(features, 0);
  const { transport } = createLoopback(dev, { memoryBytes: 4 << 20, log });
  await assert.rejects(NetDriver.open(transport), /max_virtqueue_pairs 0, outside 1\.\.32768/);
});

test('driver options and sends are checked with one sentence naming the value', async () => {
  const dev = new HostileNet(featureBit(NetFeature.MAC));
  const { transport } = createLoopback(dev, { memoryBytes: 4 << 20, log });
  await assert.rejects(NetDriver.open(transport, { rxBufferSize: 100 }), /rxBufferSize 100 is below the 1530 bytes/);
  const drv = await NetDriver.open(transport, { offloads: false });
  try {
    await assert.rejects(drv.send(new Uint8Array(10)), /a frame of 10 bytes is outside 14\.\.1518 bytes/);
    await assert.rejects(drv.setPromiscuous(true), /promiscuous mode needs VIRTIO_NET_F_CTRL_RX, which was not negotiated/);
    assert.deepEqual(drv.mac, parseMac(MAC_A));
    assert.ok(drv.linkUp, 'without STATUS the link is up');
  } finally {
    await drv.close();
  }
});
