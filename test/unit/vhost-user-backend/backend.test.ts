/**
 * The back-end state machine driven directly (no socket): ring lifecycle, activation, draining
 * before stop and memory changes, and refusals of what a hostile front-end may ask.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { DeviceId, DeviceStatus, Feature, featureBit } from '../../../src/virtio/constants.ts';
import type { DeviceContext, VirtioDevice } from '../../../src/virtio/device.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { VirtqueueError, type DescriptorChain, type DriverQueue } from '../../../src/virtio/queue.ts';
import { createDriverQueue } from '../../../src/virtio/ring.ts';
import { FrontEndError, VhostUserBackend, type VhostUserServing } from '../../../src/transports/vhost-user/backend.ts';
import type { BackendPorts } from '../../../src/transports/vhost-user/backend.ts';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES } from '../../../src/transports/vhost-user/constants.ts';
import { inflightQueueBytes } from '../../../src/transports/vhost-user/inflight.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';
import { BalloonDevice } from '../../../src/devices/balloon/device.ts';
import { BalloonFeature, StatTag, encodeStats } from '../../../src/devices/balloon/wire.ts';
import { NetDevice } from '../../../src/devices/net/device.ts';
import { createCable } from '../../../src/devices/net/port.ts';
import { NO_OFFLOAD, NetFeature } from '../../../src/devices/net/wire.ts';
import { MAC_A, MAC_B, frame } from '../net/fixture.ts';

const RAM_SIZE = 0x10_0000;
/** Where the front-end maps guest RAM in its own address space. */
const USER_BASE = 0x7f00_0000_0000n;
const RAM_FD = 100;
const KICK_FD = 200;
const CALL_FD = 201;
const QUEUE_SIZE = 16;
const RING = { desc: 0x1000, driver: 0x2000, device: 0x3000 };

/** A device that holds every chain it pops until the test completes it. */
class HoldingDevice implements VirtioDevice {
  readonly deviceId = DeviceId.RNG;
  readonly name = 'holder';
  readonly maxQueueSize = 256;
  readonly features = featureBit(Feature.EVENT_IDX);
  readonly config = new Uint8Array([1, 2, 3, 4]);
  readonly counters: DeviceCounters;
  ctx: DeviceContext | undefined;
  held: DescriptorChain[] = [];
  activations = 0;
  resets = 0;
  configWrites: [number, number][] = [];

  constructor(readonly numQueues = 1) {
    this.counters = new DeviceCounters(numQueues);
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.activations++;
  }

  queueNotify(index: number): void {
    const q = this.ctx!.queue(index);
    for (let c = q?.pop() ?? null; c !== null; c = q!.pop()) this.held.push(c);
  }

  /** Return every held chain, `n` bytes written each, and notify like a device would. */
  completeAll(index = 0): void {
    const q = this.ctx!.queue(index)!;
    for (const c of this.held.splice(0)) q.push(c, 0);
    if (q.publish()) this.ctx!.notifyQueue(index);
  }

  configWritten(offset: number, length: number): void {
    this.configWrites.push([offset, length]);
  }

  reset(): void {
    this.resets++;
    this.ctx = undefined;
  }
}

interface Harness<D extends VirtioDevice = HoldingDevice> {
  backend: VhostUserBackend;
  device: D;
  driver: DriverQueue<number>;
  kick(fd?: number): void;
  signals: number[];
  closed: number[];
  ram: Uint8Array;
  /** What each descriptor the back-end may map stands for: guest RAM and shared-memory files. */
  files: Map<number, Uint8Array>;
}

/**
 * A back-end and a driver over fresh guest RAM; or, given `restartOf`, a new back-end process
 * (with a new device) in front of the same guest: its RAM, its driver and the files it holds.
 */
function harness(numQueues = 1, restartOf?: Harness): Harness {
  return harnessOf(new HoldingDevice(numQueues), restartOf);
}

/** The harness in front of any device. */
function harnessOf<D extends VirtioDevice>(device: D, restartOf?: Harness<VirtioDevice>, serving?: VhostUserServing): Harness<D> {
  const ram = restartOf?.ram ?? new Uint8Array(RAM_SIZE);
  const files = restartOf?.files ?? new Map<number, Uint8Array>([[RAM_FD, ram]]);
  const kicks = new Map<number, () => void>();
  const signals: number[] = [];
  const closed: number[] = [];
  const ports: BackendPorts = {
    mapRegion: (fd, offset, size) => {
      const file = files.get(fd);
      assert.ok(file !== undefined, `fd ${fd} is a file`);
      if (offset + size > file.length) throw new Error(`the file behind fd ${fd} is too short`);
      return { bytes: file.subarray(offset, offset + size), unmap: () => {} };
    },
    createSharedMemory: (_name, size) => {
      const fd = 300 + files.size;
      files.set(fd, new Uint8Array(size));
      return fd;
    },
    watchKick: (fd, onKick) => {
      kicks.set(fd, onKick);
      return () => kicks.delete(fd);
    },
    signal: (fd) => signals.push(fd),
    sendConfigChange: () => {},
    close: (fd) => closed.push(fd),
  };
  const backend = new VhostUserBackend(device, ports, pino({ level: 'silent' }), serving);
  const driver = restartOf?.driver ?? createDriverQueue<number>(
    new GuestMemory([{ guestAddr: 0, bytes: ram }]),
    { ...RING, size: QUEUE_SIZE, eventIdx: false, indirect: false, inOrder: false },
    false,
    'driver',
  );
  return { backend, device, driver, signals, closed, ram, files, kick: (fd = KICK_FD) => kicks.get(fd)?.() };
}

const userAddr = (gpa: number): bigint => USER_BASE + BigInt(gpa);

/** The front-end's usual start sequence (QEMU's vhost_dev_start) for ring 0, up to but not including the kick fd. */
async function setUpRing(h: Harness<VirtioDevice>, features = featureBit(Feature.VERSION_1) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES), index = 0): Promise<void> {
  h.backend.setFeatures(features);
  await h.backend.setMemTable([{ guestAddr: 0n, size: BigInt(RAM_SIZE), userAddr: USER_BASE, mmapOffset: 0n }], [RAM_FD]);
  h.backend.setVringNum(index, QUEUE_SIZE);
  h.backend.setVringBase(index, 0);
  h.backend.setVringAddr(index, { desc: userAddr(RING.desc), driver: userAddr(RING.driver), device: userAddr(RING.device) });
  h.backend.setVringCall(index, CALL_FD);
}

function offer(h: Harness<VirtioDevice>, n: number): void {
  for (let i = 0; i < n; i++) assert.ok(h.driver.add([], [{ addr: 0x8000 + i * 64, len: 64 }], i));
  h.driver.kick();
}

test('GET_FEATURES offers the device features, VERSION_1 and the protocol-features bit', () => {
  const { backend } = harness();
  assert.equal(
    backend.offeredFeatures,
    featureBit(Feature.EVENT_IDX) | featureBit(Feature.VERSION_1) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES),
  );
  assert.throws(() => backend.setFeatures(featureBit(Feature.RING_PACKED)), FrontEndError);
  assert.throws(() => backend.setProtocolFeatures(1n << 14n), FrontEndError);
});

test('with PROTOCOL_FEATURES a ring starts disabled and serves only once enabled', async () => {
  const h = harness();
  await setUpRing(h);
  offer(h, 2);
  h.backend.setVringKick(0, KICK_FD);
  assert.equal(h.device.activations, 0, 'a disabled ring does not activate the device');
  h.kick();
  assert.equal(h.device.held.length, 0);
  h.backend.setVringEnable(0, 1);
  assert.equal(h.device.activations, 1);
  assert.equal(h.device.held.length, 2, 'buffers made available before enabling are served');
  h.device.completeAll();
  assert.deepEqual(h.signals, [CALL_FD]);
  assert.equal(h.driver.getUsed()?.token, 0);
});

test('without PROTOCOL_FEATURES a ring is enabled as soon as it starts', async () => {
  const h = harness();
  await setUpRing(h, featureBit(Feature.VERSION_1));
  h.backend.setVringKick(0, KICK_FD);
  assert.equal(h.device.activations, 1);
  offer(h, 1);
  h.kick();
  assert.equal(h.device.held.length, 1);
});

test('SET_STATUS is recorded for GET_STATUS, and status 0 resets the device', async () => {
  const h = harness();
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.STATUS));
  await setUpRing(h);
  await h.backend.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
  h.backend.setVringKick(0, KICK_FD);
  h.backend.setVringEnable(0, 1);
  assert.equal(h.device.activations, 1, 'a started, enabled ring activates the device without DRIVER_OK');
  await h.backend.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK);
  assert.equal(h.device.activations, 1);
  assert.equal(h.backend.getStatus() & DeviceStatus.DRIVER_OK, DeviceStatus.DRIVER_OK);
  await assert.rejects(h.backend.setStatus(0x100), FrontEndError);
  await h.backend.setStatus(0);
  assert.equal(h.device.resets, 1);
  assert.equal(h.backend.getStatus(), 0);
});

test('CONFIG is offered only to a device with a configuration space', () => {
  const { backend } = harness();
  assert.ok((backend.offeredProtocolFeatures & featureBit(ProtocolFeature.CONFIG)) !== 0n);
});

test('CONFIG is not offered to a front-end that provides the configuration space itself, and cannot be acked', () => {
  const { backend } = harnessOf(new HoldingDevice(1), undefined, { offerConfig: false });
  const config = featureBit(ProtocolFeature.CONFIG);
  assert.equal(backend.offeredProtocolFeatures & config, 0n);
  assert.notEqual(backend.offeredProtocolFeatures & featureBit(ProtocolFeature.MQ), 0n, 'the other protocol features are still offered');
  assert.throws(() => backend.setProtocolFeatures(backend.offeredProtocolFeatures | config), FrontEndError);
});

test('GET_VRING_BASE waits for chains in flight, then reports the position and resets the device', async () => {
  const h = harness();
  await setUpRing(h);
  h.backend.setVringKick(0, KICK_FD);
  h.backend.setVringEnable(0, 1);
  offer(h, 3);
  h.kick();
  assert.equal(h.device.held.length, 3);
  let base: number | undefined;
  const stopping = h.backend.getVringBase(0).then((b) => (base = b));
  await new Promise<void>((resolve) => setImmediate(resolve));
  assert.equal(base, undefined, 'the ring is not handed back while requests are in flight');
  offer(h, 1);
  h.kick();
  assert.equal(h.device.held.length, 3, 'a stopping ring hands out no new chains');
  h.device.completeAll();
  await stopping;
  assert.equal(base, 3);
  assert.equal(h.device.resets, 1);
  assert.ok(h.closed.includes(KICK_FD), 'the kick fd is released with the ring');
  // The ring restarts where it stopped: the fourth buffer is served next.
  h.backend.setVringBase(0, base!);
  h.backend.setVringKick(0, KICK_FD + 10);
  h.backend.setVringEnable(0, 1);
  assert.equal(h.device.held.length, 1);
});

test('a memory table change waits for chains in flight and moves running rings onto the new mapping', async () => {
  const h = harness();
  await setUpRing(h);
  h.backend.setVringKick(0, KICK_FD);
  h.backend.setVringEnable(0, 1);
  offer(h, 2);
  h.kick();
  let done = false;
  const change = h.backend
    .setMemTable(
      [
        { guestAddr: 0n, size: 0x8_0000n, userAddr: USER_BASE, mmapOffset: 0n },
        { guestAddr: 0x8_0000n, size: BigInt(RAM_SIZE - 0x8_0000), userAddr: USER_BASE + 0x8_0000n, mmapOffset: 0x8_0000n },
      ],
      [RAM_FD, RAM_FD],
    )
    .then(() => (done = true));
  await new Promise<void>((resolve) => setImmediate(resolve));
  assert.equal(done, false);
  h.device.completeAll();
  await change;
  offer(h, 1);
  h.kick();
  assert.equal(h.device.held.length, 1, 'the ring keeps serving after the change');
});

test('a memory change that drops a running ring fails that ring and flags DEVICE_NEEDS_RESET', async () => {
  const h = harness();
  await setUpRing(h);
  h.backend.setVringKick(0, KICK_FD);
  h.backend.setVringEnable(0, 1);
  await h.backend.setMemTable([{ guestAddr: 0x100000n, size: 0x1000n, userAddr: USER_BASE, mmapOffset: 0n }], [RAM_FD]);
  assert.equal(h.device.ctx!.queue(0), undefined);
  assert.equal(h.backend.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET, DeviceStatus.DEVICE_NEEDS_RESET);
  assert.equal(await h.backend.getVringBase(0), 0, 'stopping a failed ring does not wait for dropped chains');
});

test('ring messages are refused for bad indexes, sizes and placements', async () => {
  const h = harness(2);
  assert.throws(() => h.backend.setVringNum(2, 16), /ring index 2 is not below the 2 queues/);
  assert.throws(() => h.backend.setVringNum(0xffff_ffff, 16), FrontEndError);
  assert.throws(() => h.backend.setVringNum(0, 0), /queue size 0/);
  assert.throws(() => h.backend.setVringNum(0, 257), /exceeds the maximum 256/);
  assert.throws(() => h.backend.setVringEnable(0, 2), /neither 0 nor 1/);
  assert.throws(() => h.backend.setVringKick(0, undefined), /polling/);
  await setUpRing(h);
  h.backend.setVringNum(0, 12);
  assert.throws(() => h.backend.setVringKick(0, KICK_FD), /not a power of two/);
  h.backend.setVringNum(0, QUEUE_SIZE);
  h.backend.setVringAddr(0, { desc: 0x1000n, driver: userAddr(RING.driver), device: userAddr(RING.device) });
  assert.throws(() => h.backend.setVringKick(0, KICK_FD), /desc area at 0x1000 is outside guest memory/);
  h.backend.setVringAddr(0, { desc: userAddr(RAM_SIZE - 8), driver: userAddr(RING.driver), device: userAddr(RING.device) });
  assert.throws(() => h.backend.setVringKick(0, KICK_FD), /outside guest memory/);
  h.backend.setVringAddr(0, { desc: userAddr(RING.desc + 8), driver: userAddr(RING.driver), device: userAddr(RING.device) });
  assert.throws(() => h.backend.setVringKick(0, KICK_FD), /aligned/);
  h.backend.setVringBase(0, 0x10000);
  h.backend.setVringAddr(0, { desc: userAddr(RING.desc), driver: userAddr(RING.driver), device: userAddr(RING.device) });
  assert.throws(() => h.backend.setVringKick(0, KICK_FD), /16-bit/);
  h.backend.setVringBase(0, 0);
  h.backend.setVringKick(0, KICK_FD);
  assert.throws(() => h.backend.setVringNum(0, 8), /while it is started/);
  assert.throws(() => h.backend.setFeatures(featureBit(Feature.VERSION_1)), /while a ring is started/);
});

test('a ring cannot start before the memory table, its size or its addresses', async () => {
  const h = harness();
  h.backend.setFeatures(featureBit(Feature.VERSION_1));
  h.backend.setVringNum(0, QUEUE_SIZE);
  assert.throws(() => h.backend.setVringKick(0, KICK_FD), /before SET_MEM_TABLE/);
  await h.backend.setMemTable([{ guestAddr: 0n, size: BigInt(RAM_SIZE), userAddr: USER_BASE, mmapOffset: 0n }], [RAM_FD]);
  assert.throws(() => h.backend.setVringKick(0, KICK_FD), /before SET_VRING_ADDR/);
});

test('configuration space: reads past the device config are zeros, writes are bounded and reported', () => {
  const { backend, device } = harness();
  assert.deepEqual([...backend.getConfig(2, 4)], [3, 4, 0, 0]);
  assert.throws(() => backend.getConfig(250, 10), /outside the 256-byte space/);
  assert.throws(() => backend.getConfig(0, 0), FrontEndError);
  backend.setConfig(1, new Uint8Array([9, 9]));
  assert.deepEqual([...device.config], [1, 9, 9, 4]);
  assert.deepEqual(device.configWrites, [[1, 2]]);
  assert.throws(() => backend.setConfig(3, new Uint8Array([7, 7])), /past the device's 4 bytes/);
  assert.deepEqual([...device.config], [1, 9, 9, 4]);
});

test('a driver fault on a ring signals the error fd, flags DEVICE_NEEDS_RESET and stops only that ring', async () => {
  const h = harness();
  await setUpRing(h);
  h.backend.setVringErr(0, 202);
  h.backend.setVringKick(0, KICK_FD);
  h.backend.setVringEnable(0, 1);
  h.device.ctx!.fail(0, new Error('test fault'));
  assert.deepEqual(h.signals, [202]);
  assert.equal(h.device.ctx!.queue(0), undefined);
  assert.equal(h.backend.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET, DeviceStatus.DEVICE_NEEDS_RESET);
  await h.backend.resetDevice();
  assert.equal(h.backend.getStatus(), 0);
});

test('close() releases every descriptor the front-end sent', async () => {
  const h = harness();
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.BACKEND_REQ));
  h.backend.setBackendReqFd(300);
  await setUpRing(h);
  h.backend.setVringErr(0, 202);
  h.backend.setVringKick(0, KICK_FD);
  await h.backend.close();
  assert.deepEqual([...h.closed].sort(), [CALL_FD, 202, KICK_FD, 300].sort());
});

test('a ring that fails while GET_VRING_BASE waits for it does not hang the stop', async () => {
  const h = harness();
  await setUpRing(h);
  h.backend.setVringKick(0, KICK_FD);
  h.backend.setVringEnable(0, 1);
  offer(h, 1);
  h.kick();
  assert.equal(h.device.held.length, 1);
  const stopping = h.backend.getVringBase(0);
  const ctx = h.device.ctx!;
  ctx.fail(0, new Error('push failed'));
  assert.equal(await stopping, 1, 'the position the ring had reached when it failed');
});

/** QEMU's start with an inflight region: SET_INFLIGHT_FD, the ring set up at `base`, kicked and enabled. */
async function startTracked(h: Harness<VirtioDevice>, region: { mmapSize: bigint; fd: number }, base: number): Promise<void> {
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  h.backend.setInflightFd(region.mmapSize, 0n, 1, QUEUE_SIZE, region.fd);
  await setUpRing(h);
  h.backend.setVringBase(0, base);
  h.backend.setVringKick(0, KICK_FD);
  h.backend.setVringEnable(0, 1);
}

test('after a crash, a restarted back-end serves the requests left in flight first, then new ones', async () => {
  const h = harness();
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  const region = h.backend.getInflightFd(1, QUEUE_SIZE);
  assert.equal(region.mmapSize, BigInt(inflightQueueBytes(QUEUE_SIZE)));
  assert.equal(h.files.get(region.fd)?.length, inflightQueueBytes(QUEUE_SIZE), 'a shared file of that size');
  await startTracked(h, region, 0);
  offer(h, 3);
  h.kick();
  const [first, second, third] = h.device.held;
  const q = h.device.ctx!.queue(0)!;
  q.push(second, 0);
  q.publish();
  assert.equal(h.driver.getUsed()?.token, 1);

  // The process dies with two requests in flight. QEMU, unable to ask for the ring base, sends
  // the used index instead, and hands the region back to the new process.
  const r = harness(1, h);
  assert.ok(r.driver.add([], [{ addr: 0x9000, len: 64 }], 3));
  r.driver.kick();
  await startTracked(r, region, 1);
  const held = r.device.held.map((c) => c.id);
  assert.deepEqual(held.slice(0, 2), [first.id, third.id], 'the requests in flight come back first, oldest first');
  assert.equal(held.length, 3, 'then the new request, and nothing twice');
  r.device.completeAll();
  assert.deepEqual([r.driver.getUsed()?.token, r.driver.getUsed()?.token, r.driver.getUsed()?.token], [0, 2, 3]);
  assert.equal(r.driver.getUsed(), null);
});

test('a back-end that died after making used buffers visible but before notifying: its successor notifies the driver on resuming', async () => {
  const h = harness();
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  const region = h.backend.getInflightFd(1, QUEUE_SIZE);
  await startTracked(h, region, 0);
  assert.deepEqual(h.signals, [], 'a fresh region: no predecessor, nothing owed');
  offer(h, 2);
  h.kick();
  const [first, second] = h.device.held;
  const q = h.device.ctx!.queue(0)!;
  q.push(first, 0);
  q.publish();
  // The process dies here, before its call fd was written: the used buffer is in the ring, and
  // the driver, waiting for a notification, has not looked.
  const r = harness(1, h);
  await startTracked(r, region, 1);
  assert.deepEqual(r.signals, [CALL_FD], 'one used buffer notification as the ring resumes');
  assert.equal(r.driver.getUsed()?.token, 0, 'the buffer it tells of');
  assert.deepEqual(r.device.held.map((c) => c.id), [second.id]);

  // The same when the front-end sends the call fd only after the ring started.
  const s = harness(1, r);
  s.backend.setProtocolFeatures(featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  s.backend.setInflightFd(region.mmapSize, 0n, 1, QUEUE_SIZE, region.fd);
  await setUpRing(s);
  s.backend.setVringCall(0, undefined);
  s.backend.setVringBase(0, 1);
  s.backend.setVringKick(0, KICK_FD);
  s.backend.setVringEnable(0, 1);
  assert.deepEqual(s.signals, []);
  s.backend.setVringCall(0, CALL_FD);
  s.backend.setVringCall(0, CALL_FD);
  assert.deepEqual(s.signals, [CALL_FD], 'once, on the call fd that arrived');
});

test('a graceful stop leaves nothing in flight: the next start resubmits nothing', async () => {
  const h = harness();
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  const region = h.backend.getInflightFd(1, QUEUE_SIZE);
  await startTracked(h, region, 0);
  offer(h, 2);
  h.kick();
  const stopped = h.backend.getVringBase(0);
  h.device.completeAll();
  const base = await stopped;
  assert.equal(base, 2);
  const r = harness(1, h);
  await startTracked(r, region, base);
  assert.deepEqual(r.device.held, []);
});

test('SET_INFLIGHT_FD and GET_INFLIGHT_FD refuse shapes, sizes and files that do not fit', async () => {
  const h = harness(1);
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  const region = h.backend.getInflightFd(1, QUEUE_SIZE);
  const set = (size: bigint, offset: bigint, queues: number, entries: number): void =>
    h.backend.setInflightFd(size, offset, queues, entries, region.fd);
  assert.throws(() => set(region.mmapSize - 1n, 0n, 1, QUEUE_SIZE), /fewer than/);
  assert.throws(() => set(region.mmapSize, 0n, 2, QUEUE_SIZE), /2 queues/);
  assert.throws(() => set(region.mmapSize, 0n, 1, 0), /0 entries/);
  assert.throws(() => set(region.mmapSize, 0n, 1, 65535), /65535 entries/);
  assert.throws(() => set(region.mmapSize, 1n << 60n, 1, QUEUE_SIZE), /beyond 2\^53/);
  assert.throws(() => set(region.mmapSize, 64n, 1, QUEUE_SIZE), /cannot be mapped/, 'past the end of the file');
  assert.throws(() => h.backend.getInflightFd(3, QUEUE_SIZE), FrontEndError);
  await setUpRing(h);
  h.backend.setVringKick(0, KICK_FD);
  assert.throws(() => set(region.mmapSize, 0n, 1, QUEUE_SIZE), /while a ring is started/);
  assert.throws(() => h.backend.getInflightFd(1, QUEUE_SIZE), /while a ring is started/);
});

test('a region naming a broken chain makes the resubmission fail as a ring fault, not a crash', async () => {
  const h = harness();
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  const region = h.backend.getInflightFd(1, QUEUE_SIZE);
  const file = new DataView(h.files.get(region.fd)!.buffer);
  file.setUint16(8, 1, true); // version: a region in use
  file.setUint8(16 + 16 * 5, 1); // head 5 in flight...
  new DataView(h.ram.buffer).setUint16(RING.desc + 16 * 5 + 12, 1, true); // ...whose descriptor says NEXT
  new DataView(h.ram.buffer).setUint16(RING.desc + 16 * 5 + 14, 99, true); // to a slot past the table
  const errors: unknown[] = [];
  const notify = h.device.queueNotify.bind(h.device);
  h.device.queueNotify = (index: number): void => {
    try {
      notify(index);
    } catch (err) {
      errors.push(err);
    }
  };
  await startTracked(h, region, 0);
  assert.ok(errors[0] instanceof VirtqueueError && errors[0].rule === 'next out of range');
  // The region also claimed one available entry was taken that the driver never made available.
  assert.ok(errors.slice(1).every((e) => e instanceof VirtqueueError && e.rule === 'avail index jump'));
});

test('a device the framework cannot serve is refused as under every transport: unimplemented features, impossible queue sizes', () => {
  const unused = (): never => assert.fail('nothing is mapped or signalled for a refused device');
  const ports: BackendPorts = { mapRegion: unused, createSharedMemory: unused, watchKick: unused, signal: unused, sendConfigChange: unused, close: unused };
  const unimplemented = Object.assign(new HoldingDevice(), { features: featureBit(Feature.NOTIFICATION_DATA) });
  assert.throws(() => new VhostUserBackend(unimplemented, ports, pino({ level: 'silent' })), /not implemented/);
  const noQueueSize = Object.assign(new HoldingDevice(), { maxQueueSize: 0 });
  assert.throws(() => new VhostUserBackend(noQueueSize, ports, pino({ level: 'silent' })), /queue size/);
});

test('GET_VRING_BASE answers while the balloon holds its statistics buffer: the buffer goes back unused, and is taken again', async () => {
  const device = new BalloonDevice();
  const h = harnessOf(device);
  const STATS = 2; // inflateq, deflateq, statsq
  await setUpRing(h, featureBit(Feature.VERSION_1) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES) | featureBit(BalloonFeature.STATS_VQ), STATS);
  const stats = encodeStats([{ tag: StatTag.MEMFREE, value: 1234 * 4096 }]);
  h.ram.set(stats, 0x8000);
  assert.ok(h.driver.add([{ addr: 0x8000, len: stats.length }], [], 7));
  h.driver.kick();
  h.backend.setVringKick(STATS, KICK_FD);
  h.backend.setVringEnable(STATS, 1);
  assert.equal(device.stats?.values['free-memory'].value, 1234 * 4096, 'the buffer was taken and is held');
  // A memory change pauses the ring: it completes, and the buffer is taken again after it.
  await h.backend.setMemTable([{ guestAddr: 0n, size: BigInt(RAM_SIZE), userAddr: USER_BASE, mmapOffset: 0n }], [RAM_FD]);
  assert.equal(device.counters.snapshot().device.statsReceived, 2);
  const base = await h.backend.getVringBase(STATS);
  assert.equal(base, 0, 'the position is before the buffer given back');
  assert.equal(h.driver.getUsed(), null, 'the buffer was not used');
  // The ring restarts there: the same buffer is taken, and used when the host asks for statistics.
  h.backend.setVringBase(STATS, base);
  h.backend.setVringKick(STATS, KICK_FD + 10);
  h.backend.setVringEnable(STATS, 1);
  assert.equal(device.requestStats(), true);
  assert.equal(h.driver.getUsed()?.token, 7);
});

test('GET_VRING_BASE answers while a receive queue holds a buffer too small for the waiting frame; the buffer serves after the restart', async () => {
  const [port, end] = createCable();
  const device = new NetDevice({ port, mac: MAC_A });
  const h = harnessOf(device);
  await setUpRing(h, featureBit(Feature.VERSION_1) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES) | featureBit(NetFeature.MRG_RXBUF), 0);
  h.backend.setVringKick(0, KICK_FD);
  h.backend.setVringEnable(0, 1);
  offer(h, 1);
  h.kick();
  // 64 bytes take the header and 52 of the frame's 200: the buffer is held for more.
  end.send(frame(MAC_A, MAC_B, 200), NO_OFFLOAD);
  assert.equal(h.backend.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET, 0);
  const base = await h.backend.getVringBase(0);
  assert.equal(base, 0, 'the position is before the buffer given back');
  assert.equal(h.driver.getUsed(), null, 'the buffer was not used');
  h.backend.setVringBase(0, base);
  h.backend.setVringKick(0, KICK_FD + 10);
  h.backend.setVringEnable(0, 1);
  for (let i = 1; i <= 2; i++) assert.ok(h.driver.add([], [{ addr: 0x9000 + i * 64, len: 64 }], 10 + i));
  h.driver.kick();
  h.kick();
  end.send(frame(MAC_A, MAC_B, 100), NO_OFFLOAD);
  // Frames received in one run of the event loop are published together, in a microtask.
  await Promise.resolve();
  assert.deepEqual([h.driver.getUsed()?.token, h.driver.getUsed()?.token], [0, 11], 'the frame fills the buffer given back, then the next');
  assert.equal(h.driver.getUsed(), null);
});

test('with an inflight region, chains given back are no longer recorded, and resubmitted ones given back stay owed', async () => {
  const h = harness();
  h.backend.setProtocolFeatures(featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  const region = h.backend.getInflightFd(1, QUEUE_SIZE);
  await startTracked(h, region, 0);
  offer(h, 2);
  h.kick();
  const [first, second] = h.device.held;
  h.device.ctx!.queue(0)!.unpop(second);
  // A crash: only the chain still held comes back, then the one given back, from the ring.
  const r = harness(1, h);
  await startTracked(r, region, 0);
  assert.deepEqual(r.device.held.map((c) => c.id), [first.id, second.id]);
  // Both given back, newest first: the ring stops at once, the resubmitted chain still owed.
  const q = r.device.ctx!.queue(0)!;
  for (const c of r.device.held.splice(0).reverse()) q.unpop(c);
  const base = await r.backend.getVringBase(0);
  assert.equal(base, 1, 'past the resubmitted chain, before the one taken from the ring');
  const s = harness(1, r);
  await startTracked(s, region, base);
  assert.deepEqual(s.device.held.map((c) => c.id), [first.id, second.id], 'each once: the owed chain resubmitted, the other popped');
  s.device.completeAll();
  assert.deepEqual([s.driver.getUsed()?.token, s.driver.getUsed()?.token, s.driver.getUsed()], [0, 1, null]);
});

test('a transmit ring polled after busy traffic is left alone once the front-end has gone', async () => {
  const [port, end] = createCable();
  const sent: number[] = [];
  end.onReceive((f) => void sent.push(f.length));
  // A budget far longer than the test: only the front-end leaving can end the polling.
  const h = harnessOf(new NetDevice({ port, mac: MAC_A }), undefined, { pollMicros: 1_000_000 });
  const TX = 1;
  await setUpRing(h, featureBit(Feature.VERSION_1) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES), TX);
  h.backend.setVringKick(TX, KICK_FD);
  h.backend.setVringEnable(TX, 1);
  const transmit = (i: number): void => {
    // The 12-byte header (all zero: no offload), then a 60-byte frame to MAC_B.
    h.ram.set(frame(MAC_B, MAC_A, 60), 0x8000 + i * 128 + 12);
    assert.ok(h.driver.add([{ addr: 0x8000 + i * 128, len: 72 }], [], i));
  };
  // Frames one kick each, back to back, as a busy sender: the server starts polling the ring.
  for (let i = 0; i < 12; i++) {
    transmit(i);
    h.driver.kick();
    h.kick();
    while (h.driver.getUsed() !== null);
  }
  assert.equal(sent.length, 12);
  // Made available with no kick (the driver sees notifications off): the ring is polled, so the
  // frame goes out on a later turn of the event loop.
  transmit(12);
  assert.equal(h.driver.kick(), false, 'the device asked not to be notified');
  for (let turns = 0; sent.length < 13; turns++) {
    assert.ok(turns < 10_000, 'a polled ring found the frame');
    await new Promise((r) => setImmediate(r));
  }
  await h.backend.close();
  // The front-end has gone (its memory would be unmapped now): a buffer left in the ring is not
  // looked at, however many turns the event loop takes.
  transmit(13);
  h.driver.kick();
  for (let i = 0; i < 100; i++) await new Promise((r) => setImmediate(r));
  assert.equal(sent.length, 13);
  while (h.driver.getUsed() !== null);
  assert.equal(h.driver.getUsed(), null);
});
