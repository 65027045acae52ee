/**
 * The front-end against back-ends that misbehave: each failure reaches the driver as one clear
 * error, nothing hangs, nothing is read past a buffer, and no descriptor is left open.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { pino } from 'pino';
import { BlkDriver } from '../../../src/devices/blk/driver.ts';
import { RngDriver } from '../../../src/devices/rng/driver.ts';
import {
  BackendRequest,
  FrontendRequest as F,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
} from '../../../src/transports/vhost-user/constants.ts';
import { VhostUserFrontend } from '../../../src/transports/vhost-user/frontend.ts';
import { DeviceNeedsResetError, VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { encodeMessage } from '../../../src/transports/vhost-user/messages.ts';
import { DeviceId, Feature, featureBit } from '../../../src/virtio/constants.ts';
import { FakeBackend, type FakeBackendOptions } from './fake-backend.ts';
import { allQueues } from '../virtio/all-queues.ts';

const log = pino({ level: 'silent' });
const openFds = (): number => readdirSync('/proc/self/fd').length;
const REPLY_ACK = featureBit(ProtocolFeature.REPLY_ACK);

function fake(t: TestContext, options: FakeBackendOptions): FakeBackend {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-fe-'));
  const backend = new FakeBackend(join(dir, 'vhost.sock'), options);
  t.after(() => {
    backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return backend;
}

/** The first use of the native layer opens descriptors it keeps for good: count only after it. */
async function warmUp(t: TestContext): Promise<void> {
  const warm = fake(t, { onKick: 1 });
  await RngDriver.open(await connect(warm), { log }).then((r) => r.close());
  warm.disconnect();
}

const connect = (backend: FakeBackend, replyTimeoutMs?: number, deviceId: number = DeviceId.RNG): Promise<VhostUserFrontend> =>
  VhostUserFrontend.connect(backend.path, { deviceId, log, replyTimeoutMs, memorySize: 1 << 20 });

test('a back-end that closes mid-request fails the request with DEVICE_NEEDS_RESET and later ones too', async (t) => {
  const backend = fake(t, { onKick: 'close' });
  const rng = await RngDriver.open(await connect(backend), { log });
  await assert.rejects(rng.read(16), DeviceNeedsResetError);
  await assert.rejects(rng.read(16), DeviceNeedsResetError);
  await rng.close();
});

test('a used length larger than the buffer is clamped: the driver reads only its own buffer', async (t) => {
  const backend = fake(t, { onKick: 1 << 20 });
  const rng = await RngDriver.open(await connect(backend), { log, chunkBytes: 64 });
  const bytes = await rng.read(64);
  assert.equal(bytes.length, 64);
  await rng.close();
});

test('features offered, then refused with a non-zero REPLY_ACK: the driver reports the refusal', async (t) => {
  const backend = fake(t, {
    protocolFeatures: REPLY_ACK,
    hook: (m) => (m.request === F.SET_FEATURES ? { reply: { kind: 'u64', value: 1n } } : 'default'),
  });
  const frontend = await connect(backend);
  await assert.rejects(RngDriver.open(frontend, { log }), /refused features .*FEATURES_OK did not stick/);
  await frontend.close();
});

test('features offered, then refused by hanging up (no REPLY_ACK): the driver names the disconnect', async (t) => {
  const backend = fake(t, { hook: (m) => (m.request === F.SET_FEATURES ? 'close' : 'default') });
  const frontend = await connect(backend);
  await assert.rejects(RngDriver.open(frontend, { log }), /back-end disconnected: the back-end closed the connection/);
  await frontend.close();
});

test('a reply to another request than the one asked ends the connection with a message naming both', async (t) => {
  const backend = fake(t, {
    protocolFeatures: featureBit(ProtocolFeature.MQ),
    hook: (m) => (m.request === F.GET_QUEUE_NUM ? { request: F.GET_FEATURES, reply: { kind: 'u64', value: 1n } } : 'default'),
  });
  await assert.rejects(connect(backend), /reply to VHOST_USER_GET_FEATURES while a reply to VHOST_USER_GET_QUEUE_NUM was expected/);
});

for (const [what, reply, message] of [
  ['an empty GET_CONFIG reply', { kind: 'empty' }, /refused VHOST_USER_GET_CONFIG: an empty reply/],
  ['a GET_CONFIG reply of the wrong size', { kind: 'config', offset: 0, flags: 0, data: new Uint8Array(4) }, /refused VHOST_USER_GET_CONFIG: asked for 60 bytes, answered 4/],
] as const) {
  test(`${what} fails the blk driver's start with a message naming it`, async (t) => {
    const backend = fake(t, {
      protocolFeatures: featureBit(ProtocolFeature.CONFIG),
      hook: (m) => (m.request === F.GET_CONFIG ? { reply } : 'default'),
    });
    const frontend = await connect(backend, undefined, DeviceId.BLOCK);
    await assert.rejects(BlkDriver.open(frontend, { log }), message);
    await frontend.close();
  });
}

test('a back-end that never replies fails the connection after the reply deadline', async (t) => {
  const backend = fake(t, { hook: (m) => (m.request === F.GET_FEATURES ? 'ignore' : 'default') });
  await assert.rejects(connect(backend, 50), /no reply to VHOST_USER_GET_FEATURES within 50 ms/);
});

test('a back-end without PROTOCOL_FEATURES is driven without protocol messages or SET_VRING_ENABLE', async (t) => {
  const backend = fake(t, { features: featureBit(Feature.VERSION_1), onKick: 8 });
  const rng = await RngDriver.open(await connect(backend), { log, chunkBytes: 8 });
  assert.equal((await rng.read(8)).length, 8);
  await rng.close();
  assert.ok(!backend.received.includes(F.GET_PROTOCOL_FEATURES));
  assert.ok(!backend.received.includes(F.SET_VRING_ENABLE));
  assert.ok(backend.received.includes(F.GET_VRING_BASE), 'close stops the ring');
});

test('the back-end request channel: a configuration change is acknowledged and delivered, other requests refused, garbage closes it', async (t) => {
  const backend = fake(t, { protocolFeatures: REPLY_ACK | featureBit(ProtocolFeature.BACKEND_REQ), onKick: 16 });
  const frontend = await connect(backend);
  const driver = await VirtioDriver.start(frontend, { name: 'rng', deviceId: DeviceId.RNG, features: 0n, queues: allQueues, log });
  t.after(() => driver.close());
  const ack = (reply: Uint8Array): bigint => new DataView(reply.buffer, reply.byteOffset).getBigUint64(12, true);

  const changed = new Promise<void>((resolve) => driver.onConfigChange(resolve));
  const configChange = encodeMessage('backend-requests', { request: BackendRequest.CONFIG_CHANGE_MSG, payload: { kind: 'empty' }, needReply: true });
  assert.equal(ack(await backend.backendRequest(configChange.bytes)), 0n);
  await changed;

  const iotlb = encodeMessage('backend-requests', {
    request: BackendRequest.IOTLB_MSG,
    payload: { kind: 'iotlb', iova: 0n, size: 4096n, userAddr: 0n, perm: 1, type: 1 },
    needReply: true,
  });
  assert.notEqual(ack(await backend.backendRequest(iotlb.bytes)), 0n, 'IOTLB was never negotiated: refused');

  const garbage = new Uint8Array(12).fill(0xff);
  assert.equal((await backend.backendRequest(garbage)).length, 0, 'the front-end closes the channel');
  // The device itself keeps working over the main socket.
  const addr = frontend.dma.alloc(16, 1);
  assert.ok(addr !== undefined);
  assert.equal(await driver.queue(0).submit([], [{ addr, len: 16 }]), 16);
  frontend.dma.free(addr);
});

test('any reply bytes in place of any reply: the driver starts and reads, or fails with an error; nothing hangs or leaks', async (t) => {
  // The requests a front-end sends while the rng driver starts, reads and closes.
  const requests = [F.GET_FEATURES, F.GET_PROTOCOL_FEATURES, F.GET_QUEUE_NUM, F.SET_OWNER, F.SET_MEM_TABLE, F.SET_FEATURES,
    F.SET_VRING_NUM, F.SET_VRING_ADDR, F.SET_VRING_CALL, F.SET_VRING_KICK, F.SET_VRING_ENABLE, F.GET_VRING_BASE];
  const header = (request: number, flags: number, size: number): Uint8Array => {
    const h = new Uint8Array(12);
    const v = new DataView(h.buffer);
    v.setUint32(0, request, true);
    v.setUint32(4, flags, true);
    v.setUint32(8, size, true);
    return h;
  };
  const replyBytes = fc.oneof(
    fc.uint8Array({ maxLength: 40 }),
    fc
      .tuple(fc.constantFrom(...requests), fc.constantFrom(0x5, 0x1, 0xd, 0x6), fc.bigUint64Array({ minLength: 1, maxLength: 1 }))
      .map(([request, flags, [value]]) => {
        const bytes = new Uint8Array(20);
        bytes.set(header(request, flags, 8));
        new DataView(bytes.buffer).setBigUint64(12, value, true);
        return bytes;
      }),
  );
  // A right acknowledgement of the kick or call descriptor: the back-end must then really serve.
  const ack = (request: number): Uint8Array => {
    const bytes = new Uint8Array(20);
    bytes.set(header(request, 0x5, 8));
    return bytes;
  };
  const examples: [number, Uint8Array][] = [F.SET_VRING_KICK, F.SET_VRING_CALL].map((r) => [r, ack(r)]);
  await warmUp(t);
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...requests), replyBytes, async (target, raw) => {
      const before = openFds();
      const backend = fake(t, {
        protocolFeatures: REPLY_ACK | featureBit(ProtocolFeature.MQ),
        onKick: 16,
        hook: (m) => (m.request === target ? { raw } : 'default'),
      });
      let frontend: VhostUserFrontend | undefined;
      try {
        frontend = await connect(backend, 50);
        const rng = await RngDriver.open(frontend, { log, chunkBytes: 16 });
        assert.equal((await rng.read(16)).length, 16);
        await rng.close();
      } catch (err) {
        assert.ok(err instanceof Error && err.message.length > 0, String(err));
      } finally {
        await frontend?.close();
        backend.close();
      }
      assert.equal(openFds(), before);
    }),
    { numRuns: 60, examples },
  );
});

test('every failure leaves no descriptor open', async (t) => {
  const scenarios: FakeBackendOptions[] = [
    { onKick: 'close' },
    { hook: (m) => (m.request === F.SET_FEATURES ? 'close' : 'default') },
    { protocolFeatures: REPLY_ACK, hook: (m) => (m.request === F.SET_VRING_KICK ? { reply: { kind: 'u64', value: 1n } } : 'default') },
    { features: featureBit(VHOST_USER_F_PROTOCOL_FEATURES) },
  ];
  await warmUp(t);
  for (const options of scenarios) {
    const backend = fake(t, options);
    const before = openFds();
    const frontend = await connect(backend);
    const rng = await RngDriver.open(frontend, { log }).catch(() => undefined);
    await rng?.read(4).catch(() => undefined);
    // A driver that failed to start leaves its transport to the caller.
    await (rng ?? frontend).close();
    backend.disconnect();
    assert.equal(openFds(), before, `descriptors after ${JSON.stringify(options, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))}`);
  }
});

test('a driver that starts, reads and closes leaves no descriptor open on either side', async (t) => {
  await warmUp(t);
  const backend = fake(t, { protocolFeatures: REPLY_ACK | featureBit(ProtocolFeature.MQ), onKick: 16 });
  const before = openFds();
  const rng = await RngDriver.open(await connect(backend), { log, chunkBytes: 16 });
  assert.equal((await rng.read(16)).length, 16);
  // Closing stops the ring with GET_VRING_BASE, after which neither side keeps its eventfds.
  await rng.close();
  backend.disconnect();
  assert.equal(openFds(), before);
});

test('a queue enabled on a closed front-end is refused and opens no descriptor', async (t) => {
  await warmUp(t);
  const backend = fake(t, {});
  const before = openFds();
  const frontend = await connect(backend);
  await frontend.close();
  const addr = 0x4000_0000;
  await assert.rejects(frontend.enableQueue(0, 16, { desc: addr, driver: addr, device: addr }), /queue 0 cannot be enabled: the front-end .* is closed/);
  backend.disconnect();
  assert.equal(openFds(), before);
});

test('closing the front-end while a queue is being enabled releases the ring', async (t) => {
  await warmUp(t);
  const backend = fake(t, {});
  const before = openFds();
  const frontend = await connect(backend);
  const addr = 0x4000_0000;
  const enabling = frontend.enableQueue(0, 16, { desc: addr, driver: addr, device: addr });
  await frontend.close();
  await assert.rejects(enabling, /vhost-user back-end disconnected: the front-end closed the connection/);
  backend.disconnect();
  assert.equal(openFds(), before);
});
