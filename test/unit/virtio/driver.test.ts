import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MmioDriverTransport } from '../../../src/transports/mmio/driver.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { MmioReg } from '../../../src/transports/mmio/registers.ts';
import type { AccessWidth, MmioRegisterAccess } from '../../../src/transports/mmio/registers.ts';
import { DeviceStatus, Feature, featureBit } from '../../../src/virtio/constants.ts';
import { DeviceNeedsResetError, VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { FRAMEWORK_FEATURES } from '../../../src/virtio/features.ts';
import { VirtqueueError, takeUsedEach } from '../../../src/virtio/queue.ts';
import type { Segment, UsedBuffer } from '../../../src/virtio/queue.ts';
import { type QueueRequest, type ReadableRequest, RECLAIMS_PER_TURN, type RequestRing, RequestQueue } from '../../../src/virtio/request-queue.ts';
import { SplitDriverQueue } from '../../../src/virtio/split-ring.ts';
import { ScriptedDevice, WARN, captureLog, deferred } from './framework-fixture.ts';
import { RawRing } from './split-ring-fixture.ts';
import { allQueues } from './all-queues.ts';

const V1 = featureBit(Feature.VERSION_1);
const PACKED = featureBit(Feature.RING_PACKED);
const EVENT_IDX = featureBit(Feature.EVENT_IDX);

function loopback(device = new ScriptedDevice(undefined, 1)) {
  return { device, ...createLoopback(device, { memoryBytes: 1 << 16 }) };
}

/**
 * A transport whose register reads may be falsified by `override`, to play a hostile or
 * broken device; `sel` tracks DeviceFeaturesSel so overrides can answer per feature word.
 */
function tampered(regs: MmioRegisterAccess, t: MmioDriverTransport, override: (offset: number, sel: number) => number | undefined) {
  let sel = 0;
  const access: MmioRegisterAccess = {
    read: (offset: number, width: AccessWidth) => override(offset, sel) ?? regs.read(offset, width),
    write: (offset: number, width: AccessWidth, value: number) => {
      if (offset === MmioReg.DEVICE_FEATURES_SEL) sel = value;
      regs.write(offset, width, value);
    },
  };
  return new MmioDriverTransport(access, t.memory, t.dma);
}

test('negotiation accepts only the features both sides implement, VERSION_1 included', async () => {
  const device = new ScriptedDevice(undefined, 1, 16, 0b111n | featureBit(50) | EVENT_IDX | PACKED);
  const { transport, host } = loopback(device);
  const driver = await VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: 0b010n | EVENT_IDX, queues: allQueues });
  assert.equal(driver.features, V1 | 0b010n | EVENT_IDX, 'bits 0, 2, 50 and RING_PACKED offered but not implemented');
  assert.equal(host.state.driverFeatures, driver.features);
  assert.equal(host.state.status, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK);
  await driver.close();
  assert.equal(host.state.status, 0, 'close resets the device');
});

test('a device without VERSION_1 is refused and marked FAILED', async () => {
  const { transport, host } = loopback();
  const legacy = tampered(host, transport, (o, sel) => (o === MmioReg.DEVICE_FEATURES && sel === 1 ? 0 : undefined));
  await assert.rejects(
    VirtioDriver.start(legacy, { name: 'test', deviceId: 0x7f, features: 0n, queues: allQueues }),
    /test: the device does not offer VERSION_1/,
  );
  assert.equal(host.state.status & DeviceStatus.FAILED, DeviceStatus.FAILED);
});

test('a device that clears FEATURES_OK makes start fail with the features named', async () => {
  const { transport, host } = loopback();
  // The "device" advertises bit 7 but its state machine never offered it, so it refuses FEATURES_OK.
  const liar = tampered(host, transport, (o, sel) => (o === MmioReg.DEVICE_FEATURES && sel === 0 ? 0x80 : undefined));
  await assert.rejects(
    VirtioDriver.start(liar, { name: 'test', deviceId: 0x7f, features: 0x80n, queues: allQueues }),
    /test: the device refused features bit 7, VERSION_1 \(FEATURES_OK did not stick\)/,
  );
  assert.equal(host.state.status & DeviceStatus.FAILED, DeviceStatus.FAILED);
});

test('options a driver cannot honour are refused by name', async () => {
  const { transport } = loopback();
  await assert.rejects(
    VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: featureBit(Feature.NOTIFICATION_DATA), queues: allQueues }),
    /driver test: feature NOTIFICATION_DATA is not implemented by the virtio framework/,
  );
  await assert.rejects(
    VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: 0n, queues: allQueues, queueSize: 100 }),
    /test: option queueSize: queue size 100 is not a power of two \(split ring\)/,
  );
  await assert.rejects(
    VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: 0n, queues: allQueues, queueSize: 0 }),
    /option queueSize: queue size 0 is not a positive integer/,
  );
  await assert.rejects(
    VirtioDriver.start(transport, { name: 'test', deviceId: 4, features: 0n, queues: allQueues }),
    /test: expected virtio device ID 4, the device reports 127/,
  );
  await assert.rejects(
    VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: 0n, queues: 2 }),
    /test: the device has no queue 1/,
  );
  await assert.rejects(
    VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: 0n, queues: 0 }),
    /test: option queues 0 is not an integer from 1 to 65537/,
  );
});

test('the core sets up exactly the queues the driver names, chosen from features and configuration, whatever the device claims', async () => {
  // A device with as many queues as mmio probing finds (1024): the driver asks for two of them,
  // skipping one, from a configuration byte.
  const device = new ScriptedDevice(undefined, 1024);
  device.config[0] = 2;
  const { transport } = loopback(device);
  const driver = await VirtioDriver.start(transport, {
    name: 'test',
    deviceId: 0x7f,
    features: 0n,
    queues: async (plan) => {
      assert.equal(await plan.deviceQueues(), 1024);
      return [0, (await plan.readConfig(0, 1))[0]];
    },
  });
  assert.equal(driver.queueCount, 2);
  assert.equal(driver.queue(2).size, 16);
  assert.throws(() => driver.queue(1), /test: there is no queue 1 \(the driver did not set it up\)/);
  await driver.close();
  for (const queues of [[], [0, 0], [-1], [0x10001]]) {
    await assert.rejects(
      VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: 0n, queues }),
      /test: option queues \[.*\] is not a non-empty list of distinct queue indices 0\.\.65536/,
    );
  }
});

test('a packed ring may use a size that is not a power of two', async () => {
  const { transport, host } = loopback(new ScriptedDevice(undefined, 1, 16, PACKED));
  const driver = await VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: PACKED, queues: allQueues, queueSize: 12 });
  assert.equal(driver.queue(0).size, 12);
  assert.equal(host.state.queueSize(0), 12);
  await driver.close();
});

test('configuration reads repeat until the generation is the same before and after', async () => {
  const { transport, host, device } = loopback();
  device.config.set([1, 2, 3, 4]);
  let generationReads = 0;
  let configReads = 0;
  const racy = tampered(host, transport, (o) => {
    if (o === MmioReg.CONFIG_GENERATION && ++generationReads === 2) return 99;
    if (o === MmioReg.CONFIG) configReads++;
    return undefined;
  });
  const driver = await VirtioDriver.start(racy, { name: 'test', deviceId: 0x7f, features: 0n, queues: allQueues });
  assert.deepEqual([...(await driver.readConfig(0, 4))], [1, 2, 3, 4]);
  assert.equal(configReads, 2, 'the first read was torn and repeated');

  const neverStable = tampered(host, transport, (o) => (o === MmioReg.CONFIG_GENERATION ? ++generationReads : undefined));
  const unstable = await VirtioDriver.start(neverStable, { name: 'test', deviceId: 0x7f, features: 0n, queues: allQueues });
  await assert.rejects(unstable.readConfig(0, 4), /test: the configuration generation kept changing/);
});

test('DEVICE_NEEDS_RESET fails pending and later requests with a clear error', async () => {
  const gate = deferred();
  const { transport, device } = loopback(new ScriptedDevice(() => gate.promise, 1));
  const { log } = captureLog();
  const driver = await VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: FRAMEWORK_FEATURES, queues: allQueues, log });
  const buf = transport.dma.alloc(16, 8)!;
  const pending = driver.queue(0).submit([], [{ addr: buf, len: 16 }]);
  await new Promise((r) => setImmediate(r));
  assert.equal(driver.queue(0).failure, undefined, 'a running queue has no failure');
  device.ctx!.fail(0, new VirtqueueError('chain too long', 'a rule was broken'));
  await assert.rejects(pending, DeviceNeedsResetError);
  assert.ok(driver.queue(0).failure instanceof DeviceNeedsResetError, 'the queue says why it failed');
  await assert.rejects(driver.queue(0).submit([], [{ addr: buf, len: 16 }]), /test: device needs reset/);
  gate.resolve();
});

/**
 * A driver queue that holds `capacity` buffers and returns them when the test says. Buffers are
 * named by the order they were added in (0, 1, ...); their tokens are the requests.
 */
class ManualRing implements RequestRing {
  /** Buffers in flight, by the order they were added in. */
  readonly tokens: number[] = [];
  private readonly added: QueueRequest[] = [];
  private readonly used: UsedBuffer<QueueRequest>[] = [];
  kicks = 0;
  constructor(
    readonly size: number,
    private readonly capacity = size,
  ) {}
  get freeDescriptors(): number {
    return this.capacity - this.tokens.length;
  }
  add(out: readonly Segment[], inSegs: readonly Segment[], token: QueueRequest): boolean {
    if (this.tokens.length >= this.capacity || out.length + inSegs.length > this.size) return false;
    this.tokens.push(this.added.length);
    this.added.push(token);
    return true;
  }
  addSegment(addr: number, len: number, write: boolean, token: QueueRequest): boolean {
    // The rings' own check, for a segment no guest address can be.
    if (addr < 0) throw new RangeError(`a segment at ${addr}`);
    return write ? this.add([], [{ addr, len }], token) : this.add([{ addr, len }], [], token);
  }
  kick(): boolean {
    this.kicks++;
    return true;
  }
  getUsed(): UsedBuffer<QueueRequest> | null {
    return this.used.shift() ?? null;
  }
  takeUsed(tokens: (QueueRequest | undefined)[], lens: Float64Array, max: number): number {
    return takeUsedEach(this, tokens, lens, max);
  }
  /** Whether the driver asked to be notified of used buffers (it sleeps on them). */
  interrupts = true;
  enableInterrupts(): boolean {
    this.interrupts = true;
    return false;
  }
  disableInterrupts(): void {
    this.interrupts = false;
  }
  tokensInFlight(): QueueRequest[] {
    return this.tokens.map((n) => this.added[n]);
  }
  /** The device returns the `n`th buffer added, claiming `len` bytes written. */
  use(n: number, len: number): void {
    this.tokens.splice(this.tokens.indexOf(n), 1);
    this.used.push({ token: this.added[n], len });
  }
}

const seg = (len: number): Segment => ({ addr: 0x1000, len });

test('requests wait in order for ring space and are kicked once per batch', async () => {
  const ring = new ManualRing(4, 1);
  const notified: number[] = [];
  const q = new RequestQueue(ring, 'test.q0', () => notified.push(0), captureLog().log);
  const done: number[] = [];
  const all = [1, 2, 3].map((n) => q.submit([], [seg(8)]).then(() => done.push(n)));
  await Promise.resolve();
  assert.deepEqual(ring.tokens, [0], 'one fits, two wait');
  assert.equal(ring.kicks, 1);
  assert.equal(q.outstanding, 3);
  ring.use(0, 8);
  q.collect();
  assert.deepEqual(ring.tokens, [1]);
  ring.use(1, 8);
  q.collect();
  ring.use(2, 8);
  q.collect();
  await Promise.all(all);
  assert.deepEqual(done, [1, 2, 3]);
  assert.equal(notified.length, 2, 'the two requests placed in the same tick shared one kick');
});

test('startReadable() starts a burst as start() would: placed in order, the rest waiting for room behind earlier requests, one kick per turn', async () => {
  const ring = new ManualRing(4, 2);
  const notified: number[] = [];
  const q = new RequestQueue(ring, 'test.q0', () => notified.push(0), captureLog().log);
  const done: number[] = [];
  const readable = (n: number, addr = 0x1000 * (n + 1)): ReadableRequest => ({
    addr,
    out: [{ addr, len: 64 }],
    inSegs: [],
    completed: (len) => done.push(n * 1000 + len),
    failed: (err) => {
      assert.ok(err instanceof RangeError, String(err));
      done.push(-n - 1);
    },
  });
  q.startReadable([readable(0), readable(1), readable(2)], 3, 64);
  assert.deepEqual(ring.tokens, [0, 1], 'two fit, one waits');
  assert.equal(q.outstanding, 3);
  // A burst behind a waiting request waits too: nothing overtakes it.
  q.startReadable([readable(3), readable(4)], 2, 64);
  assert.equal(q.outstanding, 5);
  assert.equal(ring.kicks, 0, 'published at the turn\'s end');
  await Promise.resolve();
  assert.equal(ring.kicks, 1);
  ring.use(0, 0);
  ring.use(1, 0);
  q.collect();
  assert.deepEqual(ring.tokens, [2, 3], 'the waiting ones placed in order');
  for (const n of [2, 3]) ring.use(n, 0);
  q.collect();
  ring.use(4, 0);
  q.collect();
  assert.deepEqual(done, [0, 1000, 2000, 3000, 4000]);

  // A segment the ring refuses fails that request alone; a failed queue fails the whole burst.
  done.length = 0;
  q.startReadable([readable(5), readable(6, -1), readable(7)], 3, 64);
  assert.deepEqual(done, [-7]);
  q.fail(new RangeError('reset'));
  q.startReadable([readable(8), readable(9)], 2, 64);
  assert.deepEqual(done, [-7, -6, -8, -9, -10]);
  assert.equal(notified.length, 1);
});

test('a hostile used length is clamped to the writable bytes and logged', async () => {
  const ring = new ManualRing(4);
  const { log, lines } = captureLog();
  const q = new RequestQueue(ring, 'test.q0', () => {}, log);
  const r = q.submit([seg(4)], [seg(8), seg(8)]);
  ring.use(0, 0xffff_ffff);
  q.collect();
  assert.equal(await r, 16);
  assert.deepEqual(
    lines.filter((l) => l.level === WARN).map((l) => l.msg),
    ['test.q0: device claimed 4294967295 bytes written into 16; clamped'],
  );
});

test('a used id not in flight breaks the ring: the queue fails every request it holds, each once', async () => {
  // The ring is the queue's only record of what is in flight: its check is the one that counts.
  const raw = new RawRing(4, {});
  const q = new RequestQueue(new SplitDriverQueue<QueueRequest>(raw.memory, raw.config, 'test.q0'), 'test.q0', () => {}, captureLog().log);
  const settled: string[] = [];
  const track = (name: string, p: Promise<number>) =>
    p.then(
      (len) => settled.push(`${name} ${len}`),
      (err: Error) => settled.push(`${name} ${err.message}`),
    );
  const first = track('a', q.submit([], [seg(8)]));
  const second = track('b', q.submit([], [seg(8)]));
  await Promise.resolve();
  raw.writeUsedElem(0, 0, 8);
  raw.writeUsedElem(1, 3, 0); // descriptor 3 was never made available
  raw.usedIdx = 2;
  q.collect();
  assert.match(q.failure?.message ?? '', /^test\.q0: device broke the ring protocol: used id not in flight/, 'the queue says why it failed');
  await Promise.all([first, second]);
  assert.deepEqual(settled, [
    'a 8',
    'b test.q0: device broke the ring protocol: used id not in flight: test.q0: used element names descriptor 3',
  ]);
  assert.equal(q.outstanding, 0);
  await assert.rejects(q.submit([], [seg(8)]), /device broke the ring protocol/);
});

test('a request that can never fit the ring is refused; so is an empty one', async () => {
  const q = new RequestQueue(new ManualRing(2), 'test.q0', () => {}, captureLog().log);
  await assert.rejects(q.submit([seg(1)], [seg(1), seg(1)]), /test.q0: a request of 3 segments does not fit a queue of size 2/);
  await assert.rejects(q.submit([], []), /test.q0: a request needs at least one buffer segment/);
});

test('a configuration change reaches the driver\'s listeners, and reads see the new generation\'s bytes', async () => {
  const { transport, device } = loopback();
  const driver = await VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: 0n, queues: allQueues });
  const changed = new Promise<Uint8Array>((resolve) => driver.onConfigChange(() => resolve(driver.readConfig(0, 2))));
  device.config.set([5, 6]);
  device.ctx!.configChanged();
  assert.deepEqual([...(await changed)], [5, 6]);
  await driver.close();
});

test('without a poll budget the queue sleeps on the notification after every completion', async () => {
  const ring = new ManualRing(4);
  const q = new RequestQueue(ring, 'test.q0', () => {}, captureLog().log, { pollMicros: 0 });
  const first = q.submit([], [seg(8)]);
  const second = q.submit([], [seg(8)]);
  await Promise.resolve();
  ring.use(0, 8);
  q.collect();
  assert.equal(await first, 8);
  assert.equal(ring.interrupts, true, 'notifications back on while a request is still in flight');
  ring.use(1, 4);
  q.collect();
  assert.equal(await second, 4);
  assert.equal(ring.interrupts, true);
});

test('with a poll budget a queue with nothing in flight sleeps on the notification, and completions keep coming', async () => {
  const ring = new ManualRing(4);
  const q = new RequestQueue(ring, 'test.q0', () => {}, captureLog().log, { pollMicros: 1_000_000 });
  for (let i = 0; i < 3; i++) {
    const done = q.submit([], [seg(8)]);
    await Promise.resolve();
    ring.use(ring.tokens[0], 8);
    q.collect();
    assert.equal(await done, 8);
    assert.equal(ring.interrupts, true, 'nothing in flight: nothing to poll for');
  }
});

test('with a poll budget, requests a woken caller starts in a later microtask are polled for, not slept on', async (t) => {
  // The poll window's clock, advanced by hand: 10 µs between completions, well inside the budget.
  let clock = 0;
  t.mock.method(performance, 'now', () => clock);
  const ring = new ManualRing(4);
  const q = new RequestQueue(ring, 'test.q0', () => {}, captureLog().log, { pollMicros: 200 });
  const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
  // A sender that awaits room: each request comes after the previous one's promise settled. The
  // device returns each on the next turn, notifying only a driver asleep on notifications.
  const polled: boolean[] = [];
  for (let i = 0; i < 8; i++) {
    const done = q.submit([], [seg(8)]);
    await turn();
    const asleep = ring.interrupts;
    ring.use(ring.tokens[0], i);
    clock += 0.01;
    if (asleep) q.collect();
    else await turn();
    assert.equal(await done, i);
    polled.push(!asleep);
  }
  // The window opens with the second completion (10 µs after the first, inside the budget); from
  // then on each next request is found by the poll turn that completion scheduled.
  assert.deepEqual(polled, [false, false, true, true, true, true, true, true]);
  // Nothing in flight and nothing coming back: after one more look the queue sleeps.
  await turn();
  await turn();
  assert.equal(ring.interrupts, true, 'asleep on the notification');
  assert.equal(q.outstanding, 0);
});

test('a kept request is started again from its own completion, reusing its token, with one kick per burst', async () => {
  const ring = new ManualRing(2);
  let kicks = 0;
  const q = new RequestQueue(ring, 'test.q0', () => kicks++, captureLog().log);
  const lens: number[] = [];
  const req: QueueRequest = {
    out: [seg(4)],
    inSegs: [seg(8)],
    completed: (len) => {
      lens.push(len);
      if (lens.length < 3) q.start(req);
    },
    failed: (err) => assert.fail(err),
  };
  q.start(req);
  await Promise.resolve();
  for (let i = 0; i < 3; i++) {
    assert.equal(ring.tokens.length, 1, 'one buffer in the ring');
    ring.use(ring.tokens[0], 5 + i);
    q.collect();
    await Promise.resolve();
  }
  assert.deepEqual(lens, [5, 6, 7]);
  assert.equal(q.outstanding, 0);
  assert.equal(kicks, 3);
  const failures: Error[] = [];
  q.fail(new Error('gone'));
  q.start({ ...req, failed: (err) => failures.push(err) });
  assert.deepEqual(failures.map((e) => e.message), ['gone'], 'a failed queue fails a start at once');
});

test('requests added in one turn are made available a quarter ring at a time, at least 32, the rest at the end of the turn', async () => {
  const ring = new ManualRing(256);
  let notified = 0;
  const q = new RequestQueue(ring, 'test.q0', () => notified++, captureLog().log);
  const all = Array.from({ length: 140 }, () => q.submit([seg(60)], []));
  assert.equal(ring.kicks, 2, 'two batches of 64 published while the caller was still adding');
  await Promise.resolve();
  assert.equal(ring.kicks, 3, 'the last 12 at the end of the turn');
  assert.equal(notified, 3, 'each publication notified, as this device asks every time');
  for (const token of [...ring.tokens]) ring.use(token, 0);
  q.collect();
  assert.deepEqual(new Set(await Promise.all(all)), new Set([0]));

  const small = new ManualRing(64);
  const q2 = new RequestQueue(small, 'test.q1', () => {}, captureLog().log);
  for (let i = 0; i < 40; i++) void q2.submit([seg(60)], []);
  assert.equal(small.kicks, 1, 'a quarter of 64 is below 32: published at the 32nd');
  await Promise.resolve();
  assert.equal(small.kicks, 2);

  // startReadable() publishes the same way, inside one burst.
  const burstRing = new ManualRing(256);
  const q3 = new RequestQueue(burstRing, 'test.q2', () => {}, captureLog().log);
  const readable = Array.from({ length: 140 }, (_, i): ReadableRequest => {
    const addr = 0x1000 * (i + 1);
    return { addr, out: [{ addr, len: 60 }], inSegs: [], completed: () => {}, failed: (err) => assert.fail(err) };
  });
  q3.startReadable(readable, 140, 60);
  assert.equal(burstRing.kicks, 2, 'two batches of 64 published within the burst');
  await Promise.resolve();
  assert.equal(burstRing.kicks, 3, 'the last 12 at the end of the turn');
});

test('buffers re-posted from their completions are made available once collect() is done, not while it runs', async () => {
  const ring = new ManualRing(64);
  const q = new RequestQueue(ring, 'test.q0', () => {}, captureLog().log);
  let completions = 0;
  const reqs = Array.from({ length: 40 }, (): QueueRequest => {
    const req: QueueRequest = { out: [], inSegs: [seg(8)], completed: () => void (completions++, q.start(req)), failed: (err) => assert.fail(err) };
    return req;
  });
  for (const req of reqs) q.start(req);
  await Promise.resolve();
  const before = ring.kicks;
  for (const token of [...ring.tokens]) ring.use(token, 8);
  q.collect();
  assert.equal(completions, 40);
  assert.equal(ring.kicks, before, 'none while collect() ran: the device could refill them under it');
  await Promise.resolve();
  assert.equal(ring.kicks, before + 1);
});

test('reclaim() takes back used buffers at once, at most RECLAIMS_PER_TURN times per turn, publishing what was added first', async () => {
  const ring = new ManualRing(2);
  const q = new RequestQueue(ring, 'test.q0', () => {}, captureLog().log);
  const lens: number[] = [];
  const req = (): QueueRequest => ({ out: [seg(4)], inSegs: [seg(8)], completed: (len) => lens.push(len), failed: (err) => assert.fail(err) });
  q.start(req());
  q.start(req());
  assert.equal(ring.kicks, 0);
  ring.use(0, 3);
  assert.equal(q.reclaim(), true);
  assert.equal(ring.kicks, 1, 'added buffers made available before looking');
  assert.deepEqual(lens, [3], 'completed before reclaim() returned');
  for (let i = 1; i < RECLAIMS_PER_TURN; i++) assert.equal(q.reclaim(), true, `look ${i + 1} of the turn`);
  ring.use(1, 5);
  assert.equal(q.reclaim(), false, 'the turn has had its looks: a caller that keeps finding room still yields');
  assert.deepEqual(lens, [3]);
  await Promise.resolve();
  assert.equal(q.reclaim(), true);
  assert.deepEqual(lens, [3, 5]);
  assert.equal(q.outstanding, 0);
});

test('requests complete with polling on over a real ring, and the driver ends asleep', async () => {
  const { transport } = loopback(new ScriptedDevice((req) => void req.writer.write(Uint8Array.of(1, 2, 3)), 1));
  const driver = await VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: FRAMEWORK_FEATURES, queues: allQueues, pollMicros: 200 });
  try {
    const buf = transport.dma.alloc(16, 8)!;
    const lens = await Promise.all(Array.from({ length: 40 }, () => driver.queue(0).submit([], [{ addr: buf, len: 16 }])));
    assert.deepEqual(new Set(lens), new Set([3]));
    assert.equal(driver.queue(0).outstanding, 0);
  } finally {
    await driver.close();
  }
});

test('a poll budget that is not a non-negative number is refused with a sentence naming it', async () => {
  const { transport } = loopback();
  await assert.rejects(VirtioDriver.start(transport, { name: 'test', deviceId: 0x7f, features: 0n, queues: allQueues, pollMicros: -1 }), /test: option pollMicros -1 is not a non-negative number/);
});
