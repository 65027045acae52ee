/**
 * The front-end's local device model (frontend-net.ts): a back-end without the CONFIG protocol
 * feature implements only the data path, so the front-end serves the configuration space and
 * cuts the features down; a back-end with CONFIG is passed through untouched. Run against this
 * project's own back-end in one process, with the net device made to look like DPDK's
 * net_vhost: no configuration space, no control queue.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { NetDevice } from '../../../src/devices/net/device.ts';
import { NetDriver } from '../../../src/devices/net/driver.ts';
import { L2Switch } from '../../../src/devices/net/switch.ts';
import { NetFeature } from '../../../src/devices/net/wire.ts';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { ProtocolFeature } from '../../../src/transports/vhost-user/constants.ts';
import { NET_LOCAL_MODEL } from '../../../src/devices/net/descriptor.ts';
import { connectNet } from '../../../src/transports/vhost-user/frontend-net.ts';
import { VhostUserFrontend } from '../../../src/transports/vhost-user/frontend.ts';
import { DeviceId, Feature, featureBit, hasFeature } from '../../../src/virtio/constants.ts';
import type { VirtioDevice } from '../../../src/virtio/device.ts';
import { serveOnSocket } from '../vhost-user-backend/serve-on-socket.ts';

const log = pino({ level: 'silent' });

const serve = (t: TestContext, device: VirtioDevice): string => serveOnSocket(t, device, log).path;

/** `device` with its configuration space hidden, so the back-end offers no CONFIG, as net_vhost. */
function dataPathOnly(device: NetDevice): VirtioDevice {
  return {
    deviceId: device.deviceId,
    name: device.name,
    numQueues: device.numQueues,
    maxQueueSize: device.maxQueueSize,
    counters: device.counters,
    features: device.features,
    config: new Uint8Array(0),
    activate: (ctx) => device.activate(ctx),
    queueNotify: (index) => device.queueNotify(index),
    reset: () => device.reset(),
  };
}

test('a back-end without CONFIG gets the local model: features cut down, its configuration space, its queue count', async (t) => {
  const path = serve(t, new RngDevice());
  const model = { features: featureBit(Feature.VERSION_1), config: Uint8Array.of(1, 2, 3), queues: 3 };
  const fe = await VhostUserFrontend.connect(path, { deviceId: DeviceId.RNG, log, memorySize: 1 << 20, localModel: model });
  t.after(() => fe.close());
  assert.equal(hasFeature(fe.protocolFeatures, ProtocolFeature.CONFIG), false);
  assert.equal(await fe.deviceFeatures(), featureBit(Feature.VERSION_1), 'only the model features the back-end offers');
  assert.equal(await fe.numQueues(), 3);
  assert.deepEqual(await fe.readConfig(1, 4), Uint8Array.of(2, 3, 0, 0), 'bytes past the model space read as zero');
  await assert.rejects(fe.writeConfig(0, Uint8Array.of(9)), /read-only/);
  assert.deepEqual(model.config, Uint8Array.of(1, 2, 3));
  // Accepting a feature the model withholds fails FEATURES_OK even though the back-end offers it.
  await fe.setDriverFeatures(featureBit(Feature.VERSION_1) | featureBit(Feature.EVENT_IDX));
  await fe.setStatus(1 | 2 | 8);
  assert.equal((await fe.getStatus()) & 8, 0);
});

test('a back-end with CONFIG is a whole device: the net model is not applied', async (t) => {
  const path = serve(t, new NetDevice({ port: new L2Switch().createPort(), mac: '52:54:00:00:00:01' }));
  const net = await NetDriver.open(await connectNet(path, { log, memorySize: 4 << 20 }), { log });
  t.after(() => net.close());
  assert.equal(hasFeature(net.features, NetFeature.CTRL_VQ), true);
  assert.equal(hasFeature(net.features, NetFeature.MAC), true);
  assert.deepEqual(net.mac, Uint8Array.of(0x52, 0x54, 0, 0, 0, 1));
});

for (const packed of [false, true]) {
  test(`two net drivers over data-path-only back-ends exchange frames through a switch (${packed ? 'packed' : 'split'})`, async (t) => {
    const sw = new L2Switch();
    const devices = [0, 1].map(() => new NetDevice({ port: sw.createPort(), features: { control: false } }));
    const [a, b] = await Promise.all(
      devices.map(async (d) => {
        const net = await NetDriver.open(await connectNet(serve(t, dataPathOnly(d)), { log, memorySize: 4 << 20 }), { log, packed });
        t.after(() => net.close());
        return net;
      }),
    );
    for (const net of [a, b]) {
      assert.equal(net.features & ~NET_LOCAL_MODEL.features, 0n, 'nothing beyond the data path was negotiated');
      assert.equal(hasFeature(net.features, Feature.RING_PACKED), packed);
      assert.equal(net.linkUp, true);
    }
    const frame = new Uint8Array(100);
    frame.set(b.mac, 0);
    frame.set(a.mac, 6);
    frame.fill(0x5a, 12);
    await a.send(frame);
    assert.deepEqual((await b.next())?.frame, frame);
  });
}
