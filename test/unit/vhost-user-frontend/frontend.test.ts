/**
 * The front-end against this project's own vhost-user back-end, in one process over a real
 * Unix socket: the unchanged blk and rng drivers on split and packed rings, configuration
 * change interrupts, a ring error becoming DEVICE_NEEDS_RESET, reconnecting, and descriptor
 * hygiene.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { BlkDevice } from '../../../src/devices/blk/device.ts';
import { BlkDriver } from '../../../src/devices/blk/driver.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { RngDriver } from '../../../src/devices/rng/driver.ts';
import { BackendServer } from '../../../src/transports/vhost-user/backend-server.ts';
import { ProtocolFeature } from '../../../src/transports/vhost-user/constants.ts';
import { VhostUserFrontend } from '../../../src/transports/vhost-user/frontend.ts';
import { DeviceId, Feature, hasFeature } from '../../../src/virtio/constants.ts';
import type { DeviceContext, VirtioDevice } from '../../../src/virtio/device.ts';
import { DeviceNeedsResetError, VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { FRAMEWORK_FEATURES } from '../../../src/virtio/features.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';
import { allQueues } from '../virtio/all-queues.ts';
import { serveOnSocket } from '../vhost-user-backend/serve-on-socket.ts';

const log = pino({ level: 'silent' });
const openFds = (): number => readdirSync('/proc/self/fd').length;

const serve = (t: TestContext, device: VirtioDevice): { path: string; server: BackendServer } => serveOnSocket(t, device, log);

/** vhost-user does not tell the front-end a ring size limit: like QEMU's queue-size, it is configured. */
const connect = (path: string, deviceId: number, queueSize = 128): Promise<VhostUserFrontend> =>
  VhostUserFrontend.connect(path, { deviceId, log, memorySize: 4 << 20, queueSize });

/** A device with an 8-byte configuration space it can change, and a queue it can break. */
class ConfigDevice implements VirtioDevice {
  readonly deviceId = DeviceId.RTC;
  readonly name = 'config';
  readonly numQueues = 1;
  readonly maxQueueSize = 64;
  readonly features = FRAMEWORK_FEATURES;
  readonly config = new Uint8Array(8);
  readonly counters = new DeviceCounters(1);
  private ctx: DeviceContext | undefined;

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
  }
  queueNotify(): void {}
  reset(): void {
    this.ctx = undefined;
  }
  change(value: number): void {
    new DataView(this.config.buffer).setUint32(0, value, true);
    this.ctx?.configChanged();
  }
  breakQueue(): void {
    this.ctx?.fail(0, new Error('broken on purpose'));
  }
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`blk driver over the front-end: write, read back, flush, discard, two queues (${ring})`, async (t) => {
    const disk = new MemoryBackend(4 << 20);
    const { path } = serve(t, new BlkDevice({ backend: disk, queues: 2, queueSize: 128 }));
    const blk = await BlkDriver.open(await connect(path, DeviceId.BLOCK), { log, packed });
    assert.equal(blk.capacity, (4 << 20) / 512);
    assert.equal(blk.queues, 2);
    assert.equal(hasFeature(blk.features, Feature.RING_PACKED), packed);
    const data = Uint8Array.from({ length: 64 * 1024 }, (_, i) => (i * 7 + 3) & 0xff);
    await Promise.all([blk.write(100, data), blk.write(1000, data.subarray(0, 4096))]);
    assert.deepEqual(disk.bytes.subarray(100 * 512, 100 * 512 + data.length), data, 'the back-end holds what was written');
    assert.deepEqual(await blk.read(100, data.length), data);
    await blk.flush();
    await blk.discard(100, 8);
    assert.deepEqual(await blk.read(100, 4096), new Uint8Array(4096));
    await blk.close();
  });

  test(`rng driver over the front-end (${ring})`, async (t) => {
    const { path } = serve(t, new RngDevice());
    const rng = await RngDriver.open(await connect(path, DeviceId.RNG), { log, packed });
    const bytes = await rng.read(10_000);
    assert.equal(bytes.length, 10_000);
    assert.ok(new Set(bytes).size > 200, 'random bytes, not a constant');
    await rng.close();
  });
}

test('the back-end negotiates the protocol features the front-end uses', async (t) => {
  const { path } = serve(t, new BlkDevice({ backend: new MemoryBackend(1 << 20) }));
  const frontend = await connect(path, DeviceId.BLOCK);
  for (const bit of [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.BACKEND_REQ, ProtocolFeature.STATUS]) {
    assert.ok(hasFeature(frontend.protocolFeatures, bit), `protocol feature ${bit}`);
  }
  assert.ok(!hasFeature(await frontend.deviceFeatures(), 30), 'PROTOCOL_FEATURES is the transport\'s, not offered to the driver');
  await frontend.close();
});

test('a configuration change reaches the driver through the back-end request channel', async (t) => {
  const device = new ConfigDevice();
  const { path } = serve(t, device);
  const driver = await VirtioDriver.start(await connect(path, DeviceId.RTC, 64), { name: 'config', deviceId: DeviceId.RTC, features: 0n, queues: allQueues, log });
  const changed = new Promise<void>((resolve) => driver.onConfigChange(resolve));
  device.change(0xfeed);
  await changed;
  assert.equal(new DataView((await driver.readConfig(0, 4)).buffer).getUint32(0, true), 0xfeed);
  await driver.close();
});

test('a ring the back-end stops fails the pending request with DEVICE_NEEDS_RESET', async (t) => {
  const device = new ConfigDevice();
  const { path } = serve(t, device);
  const frontend = await connect(path, DeviceId.RTC, 64);
  const driver = await VirtioDriver.start(frontend, { name: 'config', deviceId: DeviceId.RTC, features: 0n, queues: allQueues, log });
  const addr = frontend.dma.alloc(16, 16);
  assert.ok(addr !== undefined);
  const pending = driver.queue(0).submit([], [{ addr, len: 16 }]);
  device.breakQueue();
  await assert.rejects(pending, DeviceNeedsResetError);
  await driver.close();
});

test('a connection refused or missing is one sentence naming the socket', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-fe-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await assert.rejects(connect(join(dir, 'none.sock'), DeviceId.BLOCK), { message: `vhost-user socket ${join(dir, 'none.sock')} does not exist` });
  await assert.rejects(connect(dir, DeviceId.BLOCK), /cannot connect to the vhost-user socket .*\(E[A-Z]+\)/);
});

test('a new front-end on the same socket after close works, and close gives back every descriptor', async (t) => {
  const disk = new MemoryBackend(1 << 20);
  const { path, server } = serve(t, new BlkDevice({ backend: disk, queues: 1 }));
  const session = async (value: number): Promise<void> => {
    const blk = await BlkDriver.open(await connect(path, DeviceId.BLOCK), { log });
    await blk.write(0, new Uint8Array(512).fill(value));
    assert.deepEqual(await blk.read(0, 512), new Uint8Array(512).fill(value));
    await blk.close();
    // The back-end ends its side once it sees the front-end go; wait for that before counting.
    await server.session?.ended;
  };
  await session(1);
  const before = openFds();
  await session(2);
  await session(3);
  assert.equal(openFds(), before);
  assert.equal(disk.bytes[0], 3);
});
