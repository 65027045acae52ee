import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DeviceStatus, Feature, featureBit } from '../../../src/virtio/constants.ts';
import { DeviceState } from '../../../src/virtio/device-state.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { VirtqueueError } from '../../../src/virtio/queue.ts';
import { createDeviceQueue, negotiatedQueueConfig } from '../../../src/virtio/ring.ts';
import { placeSplitRing } from '../../../src/virtio/split-ring.ts';
import { ScriptedDevice, WARN, captureLog } from './framework-fixture.ts';

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, DEVICE_NEEDS_RESET, FAILED } = DeviceStatus;
const V1 = featureBit(Feature.VERSION_1);

function setup(device = new ScriptedDevice()) {
  const memory = GuestMemory.allocate(0x10000);
  const events: string[] = [];
  const { log, lines } = captureLog();
  const state = new DeviceState(
    device,
    memory,
    { usedBuffer: (q) => events.push(`used ${q}`), configChange: () => events.push('config') },
    log,
  );
  return { state, device, memory, events, lines };
}

function negotiate(state: DeviceState, features = V1): void {
  state.writeStatus(ACKNOWLEDGE);
  state.writeStatus(ACKNOWLEDGE | DRIVER);
  state.writeDriverFeatures(features);
  state.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

/** Lay out and enable split queue `index` of `size` entries at `at`. */
function placeQueue(state: DeviceState, index: number, size: number, at: number): void {
  const ring = placeSplitRing(at, size);
  state.writeQueueSize(index, size);
  state.writeQueueArea(index, 'desc', ring.desc);
  state.writeQueueArea(index, 'driver', ring.driver);
  state.writeQueueArea(index, 'device', ring.device);
  state.writeQueueReady(index, true);
}

function start(state: DeviceState): void {
  negotiate(state);
  placeQueue(state, 0, 8, 0x1000);
  placeQueue(state, 1, 8, 0x2000);
  state.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

test('initialization walks ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK and activates the device once', () => {
  const { state, device } = setup();
  negotiate(state);
  assert.equal(state.status, ACKNOWLEDGE | DRIVER | FEATURES_OK);
  assert.equal(state.driverFeatures, V1);
  placeQueue(state, 0, 8, 0x1000);
  assert.equal(device.activations, 0, 'nothing runs before DRIVER_OK');
  state.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  assert.equal(state.status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  assert.equal(device.activations, 1);
  assert.ok(device.ctx?.queue(0), 'the enabled queue is live');
  assert.equal(device.ctx?.queue(1), undefined, 'a queue the driver did not enable is not');
  assert.equal(device.ctx?.features, V1);
});

test('FEATURES_OK does not stick without VERSION_1 or with features the device did not offer', () => {
  const { state } = setup(new ScriptedDevice(undefined, 1, 16, featureBit(3)));
  negotiate(state, featureBit(3));
  assert.equal(state.status & FEATURES_OK, 0, 'VERSION_1 missing');

  state.writeStatus(0);
  negotiate(state, V1 | featureBit(4));
  assert.equal(state.status & FEATURES_OK, 0, 'bit 4 was not offered');

  state.writeStatus(0);
  state.writeStatus(ACKNOWLEDGE | DRIVER);
  state.writeDriverFeatureWord(0, 1 << 3);
  state.writeDriverFeatureWord(1, 1);
  state.writeDriverFeatureWord(2, 1);
  state.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
  assert.equal(state.status & FEATURES_OK, 0, 'a bit beyond 63 was accepted');

  state.writeStatus(0);
  negotiate(state, V1 | featureBit(3));
  assert.equal(state.status & FEATURES_OK, FEATURES_OK, 'an offered subset with VERSION_1 is accepted');
});

test('feature words are offered through a select index and cannot change after FEATURES_OK', () => {
  const { state } = setup(new ScriptedDevice(undefined, 1, 16, featureBit(0) | featureBit(Feature.EVENT_IDX)));
  assert.equal(state.deviceFeatureWord(0), (1 | (1 << Feature.EVENT_IDX)) >>> 0);
  assert.equal(state.deviceFeatureWord(1), 1, 'VERSION_1 is bit 32, always offered');
  assert.equal(state.deviceFeatureWord(2), 0);
  negotiate(state, V1 | featureBit(0));
  state.writeDriverFeatureWord(0, 1 << Feature.EVENT_IDX);
  state.writeDriverFeatures(V1);
  assert.equal(state.driverFeatures, V1 | featureBit(0), 'writes after FEATURES_OK are ignored');
  assert.equal(state.driverFeatureWord(0), 1);
});

test('DRIVER_OK without FEATURES_OK is ignored; the driver cannot clear bits or set DEVICE_NEEDS_RESET', () => {
  const { state, device } = setup();
  state.writeStatus(ACKNOWLEDGE | DRIVER | DRIVER_OK);
  assert.equal(state.status, ACKNOWLEDGE | DRIVER);
  assert.equal(device.activations, 0);
  state.writeStatus(ACKNOWLEDGE | DEVICE_NEEDS_RESET);
  assert.equal(state.status, ACKNOWLEDGE | DRIVER, 'DRIVER stays, NEEDS_RESET is not the driver\'s to set');
  state.writeStatus(ACKNOWLEDGE | DRIVER | FAILED);
  assert.equal(state.status & FAILED, FAILED);
});

test('writing 0 resets at any time: the device is reset, queues and features are dropped', () => {
  const { state, device, events } = setup();
  start(state);
  const ctx = device.ctx;
  assert.ok(ctx?.queue(0));
  state.writeStatus(0);
  assert.equal(state.status, 0);
  assert.equal(device.resets, 1);
  assert.equal(state.driverFeatures, 0n);
  assert.equal(state.queueReady(0), false);
  assert.equal(state.queueSize(0), 16, 'size reads as the maximum again');
  assert.equal(ctx?.queue(0), undefined, 'the old context no longer reaches a queue');
  ctx?.notifyQueue(0);
  ctx?.fail(0, new VirtqueueError('chain too long', 'late'));
  assert.deepEqual(events, [], 'the old context can neither notify nor fail the new driver');
  assert.equal(state.status, 0);
  start(state);
  assert.equal(device.activations, 2);
});

test('queue sizes of 0, above the maximum or (split) not a power of two are refused with DEVICE_NEEDS_RESET', () => {
  for (const size of [0, 12, 32]) {
    const { state, lines, events } = setup();
    negotiate(state);
    state.writeQueueSize(0, size);
    state.writeQueueReady(0, true);
    assert.equal(state.queueReady(0), false, `size ${size}: the queue stays disabled`);
    assert.equal(state.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    const warnings = lines.filter((l) => l.level === WARN);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].queue, 'test.q0');
    assert.equal(warnings[0].rule, 'bad queue size');
    assert.deepEqual(events, [], 'no notification before DRIVER_OK');
  }
});

test('a packed ring accepts a size that is not a power of two', () => {
  const { state } = setup(new ScriptedDevice(undefined, 1, 16, featureBit(Feature.RING_PACKED)));
  negotiate(state, V1 | featureBit(Feature.RING_PACKED));
  state.writeQueueSize(0, 12);
  state.writeQueueReady(0, true);
  assert.equal(state.queueReady(0), true);
  assert.equal(state.status & DEVICE_NEEDS_RESET, 0);
});

test('a queue placed outside guest memory or misaligned puts the device in DEVICE_NEEDS_RESET at DRIVER_OK', () => {
  for (const [area, addr, rule] of [
    ['desc', 0x20000, /outside guest memory/],
    ['device', 0x3002, /misaligned/],
  ] as const) {
    const { state, device, lines } = setup();
    negotiate(state);
    const ring = placeSplitRing(0x3000, 8);
    state.writeQueueSize(0, 8);
    state.writeQueueArea(0, 'desc', ring.desc);
    state.writeQueueArea(0, 'driver', ring.driver);
    state.writeQueueArea(0, 'device', ring.device);
    state.writeQueueArea(0, area, addr);
    state.writeQueueReady(0, true);
    state.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert.equal(state.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET, area);
    assert.equal(device.activations, 0, 'a device with a broken queue is not started');
    const warnings = lines.filter((l) => l.level === WARN);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0].rule ?? '', rule);
    assert.equal(warnings[0].queue, 'test.q0');
  }
});

test('queue registers ignore writes while the queue is enabled, and high/low halves combine', () => {
  const { state } = setup();
  negotiate(state);
  state.writeQueueAreaHalf(0, 'desc', false, 0x1000);
  state.writeQueueAreaHalf(0, 'desc', true, 0x2);
  assert.equal(state.queueArea(0, 'desc'), 0x2_0000_1000);
  placeQueue(state, 0, 8, 0x1000);
  state.writeQueueSize(0, 4);
  state.writeQueueArea(0, 'desc', 0x5000);
  assert.equal(state.queueSize(0), 8);
  assert.equal(state.queueArea(0, 'desc'), 0x1000);
  assert.equal(state.queueMaxSize(0), 16);
  assert.equal(state.queueMaxSize(2), 0, 'no such queue');
  state.writeQueueReady(7, true);
  assert.equal(state.status & DEVICE_NEEDS_RESET, 0, 'writes to a queue that does not exist do nothing');
});

test('DeviceContext.fail enters DEVICE_NEEDS_RESET, notifies, stops that queue only, and logs one line', () => {
  const { state, device, events, lines } = setup();
  start(state);
  const ctx = device.ctx!;
  ctx.fail(0, new VirtqueueError('chain too long', 'test.q0: more than 8 descriptors (loop?)'));
  ctx.fail(0, new VirtqueueError('chain too long', 'again'));
  ctx.fail(1, new VirtqueueError('nested indirect', 'later fault on another queue'));
  assert.equal(state.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
  assert.deepEqual(events, ['config']);
  assert.equal(ctx.queue(0), undefined);
  assert.equal(ctx.queue(1), undefined, 'the later fault stopped queue 1 too');
  const warnings = lines.filter((l) => l.level === WARN);
  assert.equal(warnings.length, 1);
  assert.equal(warnings[0].queue, 'test.q0');
  assert.equal(warnings[0].rule, 'chain too long');
  state.writeStatus(0);
  start(state);
  assert.equal(state.status & DEVICE_NEEDS_RESET, 0, 'reset clears it');
});

test('ring faults are counted per queue in the device counters', () => {
  const { state, device } = setup();
  start(state);
  device.ctx!.fail(1, new VirtqueueError('chain too long', 'test.q1'));
  const queues = device.counters.snapshot().queues;
  assert.deepEqual([queues[0].ringFaults, queues[1].ringFaults], [0, 1]);
});

test('FEATURES_OK is refused for a feature accepted without the one it requires (§2.2.1)', () => {
  const A = 1;
  const B = 2;
  class Dependent extends ScriptedDevice {
    readonly featureRequirements = [{ feature: A, all: [B] }];
    readonly featureNames = { [A]: 'NEEDS_B', [B]: 'B' };
  }
  const { state } = setup(new Dependent(undefined, 2, 16, featureBit(A) | featureBit(B)));
  negotiate(state, V1 | featureBit(A));
  assert.equal(state.status & FEATURES_OK, 0);
  assert.equal(state.negotiateFeatures(V1 | featureBit(A)), 'NEEDS_B requires B, which the driver did not accept (§2.2.1)');
  state.writeStatus(0);
  negotiate(state, V1 | featureBit(A) | featureBit(B));
  assert.equal(state.status & FEATURES_OK, FEATURES_OK);
});

test('a queue may have a smaller maximum than the device (queueMaxSize), and larger sizes are refused', () => {
  class SmallControl extends ScriptedDevice {
    queueMaxSize(index: number): number {
      return index === 1 ? 4 : 16;
    }
  }
  const { state } = setup(new SmallControl());
  assert.deepEqual([state.queueMaxSize(0), state.queueMaxSize(1), state.queueMaxSize(2)], [16, 4, 0]);
  assert.equal(state.queueSize(1), 4, 'a queue starts at its own maximum');
  negotiate(state);
  state.writeQueueSize(1, 8);
  state.writeQueueReady(1, true);
  assert.equal(state.queueReady(1), false);
  assert.equal(state.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
});

test('the configuration space: reads past the end are zero, writes past it are dropped, changes bump the generation', () => {
  const device = new ScriptedDevice(undefined, 1, 16, 0n, 4);
  device.config.set([1, 2, 3, 4]);
  const { state, events } = setup(device);
  assert.deepEqual([...state.readConfig(2, 4)], [3, 4, 0, 0]);
  state.writeConfig(3, new Uint8Array([9, 9]));
  assert.deepEqual([...device.config], [1, 2, 3, 4]);
  state.writeConfig(1, new Uint8Array([7]));
  assert.deepEqual([...device.config], [1, 7, 3, 4]);
  const g = state.configGeneration;
  state.configChanged();
  assert.equal(state.configGeneration, g + 1);
  assert.deepEqual(events, [], 'no configuration notification before DRIVER_OK');
  negotiate(state);
  state.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  device.ctx!.configChanged();
  assert.equal(state.configGeneration, g + 2);
  assert.deepEqual(events, ['config']);
});

test('a device offering a reserved feature the framework does not implement is refused by name', () => {
  assert.throws(
    () => setup(new ScriptedDevice(undefined, 1, 16, featureBit(Feature.NOTIFICATION_DATA))),
    /device test: feature NOTIFICATION_DATA is not implemented/,
  );
  assert.throws(() => setup(new ScriptedDevice(undefined, 1, 100)), /device test: maximum queue size 100 is not a power of two/);
});

test('notifications reach the device only for live queues of a running device', () => {
  const notified: number[] = [];
  const device = new ScriptedDevice();
  device.queueNotify = (i) => void notified.push(i);
  const { state } = setup(device);
  negotiate(state);
  placeQueue(state, 0, 8, 0x1000);
  state.notify(0);
  assert.deepEqual(notified, [], 'before DRIVER_OK');
  state.writeStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  state.notify(0);
  state.notify(1);
  state.notify(99);
  assert.deepEqual(notified, [0], 'queue 1 was never enabled, 99 does not exist');
});

test('a transport that builds its rings: features in one step, attached queues, a start without DRIVER_OK', () => {
  const device = new ScriptedDevice(undefined, 2, 16, featureBit(Feature.EVENT_IDX));
  const events: string[] = [];
  const failed: number[] = [];
  const state = new DeviceState(
    device,
    undefined,
    { usedBuffer: (q) => events.push(`used ${q}`), configChange: () => events.push('config'), queueFailed: (q) => failed.push(q) },
    captureLog().log,
  );
  assert.match(state.negotiateFeatures(featureBit(Feature.EVENT_IDX))!, /VERSION_1/);
  assert.equal(state.status & FEATURES_OK, 0);
  assert.equal(state.negotiateFeatures(V1 | featureBit(Feature.EVENT_IDX)), undefined, 'sent again, the features replace the first ones');
  assert.equal(state.status, FEATURES_OK);

  state.start();
  assert.equal(device.activations, 0, 'no activation without guest memory');
  const memory = GuestMemory.allocate(0x10000);
  state.useMemory(memory);
  const ring = createDeviceQueue(memory, negotiatedQueueConfig(state.driverFeatures, 8, placeSplitRing(0x1000, 8)), false, 'q0');
  state.attachQueue(0, ring);
  assert.equal(state.queueReady(0), true);
  state.start();
  assert.equal(device.activations, 1, 'started without DRIVER_OK');
  assert.equal(device.ctx?.queue(0), ring);
  assert.equal(device.ctx?.memory, memory);
  device.ctx!.configChanged();
  assert.deepEqual(events, ['config'], 'a started device notifies configuration changes without DRIVER_OK');

  device.ctx!.fail(0, new VirtqueueError('test rule', 'broken'));
  assert.deepEqual(failed, [0], 'the transport hears which queue failed');
  assert.equal(state.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
  assert.equal(device.ctx?.queue(0), undefined);

  state.stop();
  assert.equal(device.resets, 1);
  assert.equal(state.status, FEATURES_OK, 'stopping answers DEVICE_NEEDS_RESET and keeps the features');
  state.reset(true);
  assert.equal(state.status, 0);
  assert.equal(state.driverFeatures, V1 | featureBit(Feature.EVENT_IDX), 'a status reset may keep the front-end features');
  state.reset();
  assert.equal(state.driverFeatures, 0n);
});

test('a device offering a feature the framework does not implement, or a queue size no ring has, is refused', () => {
  assert.throws(() => setup(new ScriptedDevice(undefined, 1, 16, featureBit(Feature.NOTIFICATION_DATA))), /not implemented/);
  assert.throws(() => setup(new ScriptedDevice(undefined, 1, 0)), /queue size/);
});
