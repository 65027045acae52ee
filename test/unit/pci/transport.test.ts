import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino, type Logger } from 'pino';
import { BlkDevice } from '../../../src/devices/blk/device.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { RngDriver } from '../../../src/devices/rng/driver.ts';
import { CommonCfg } from '../../../src/transports/pci/common-cfg.ts';
import { q35IntxLine } from '../../../src/transports/pci/q35.ts';
import { VirtioPciTransport } from '../../../src/transports/pci/transport.ts';
import { DeviceId, DeviceStatus, Feature, hasFeature } from '../../../src/virtio/constants.ts';
import { DmaPool } from '../../../src/virtio/dma.ts';
import type { VirtioDevice } from '../../../src/virtio/device.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { BAR4, FakeConfig, FakeVirtioPciBus, TARGET, configSpace, qemuCaps, type Access } from './fixture.ts';

const LINE = q35IntxLine(4, 1);

async function open(device: VirtioDevice, options: { multiplier?: number; msixEnabled?: boolean; log?: Logger } = {}) {
  const memory = GuestMemory.allocate(1 << 20);
  const bus = new FakeVirtioPciBus(device, memory, LINE);
  const config = new FakeConfig();
  const space = configSpace(device.deviceId, qemuCaps(device.config.length, options.multiplier), { msixEnabled: options.msixEnabled });
  config.spaces.set(TARGET, space);
  const transport = await VirtioPciTransport.open(bus, config, TARGET, [BAR4], {
    memory,
    dma: new DmaPool(memory, 0x1000, (1 << 20) - 0x1000),
    intxLine: q35IntxLine,
    log: options.log,
  });
  return { bus, config, space, transport, memory };
}

const common = (accesses: readonly Access[]) => accesses.filter((a) => a.structure === 'COMMON');

test('the device id comes from the PCI device id (§4.1.2.1), and the INTx line from slot and pin', async () => {
  const { transport } = await open(new RngDevice());
  assert.equal(await transport.deviceId(), DeviceId.RNG);
  assert.equal(transport.line, 20, 'slot 4, INTA: PIRQE, GSI 20');
});

test('opening enables memory decoding and bus mastering, clears INTx disable, and turns an enabled MSI-X off', async () => {
  const device = new RngDevice();
  const memory = GuestMemory.allocate(1 << 20);
  const config = new FakeConfig();
  const space = configSpace(device.deviceId, qemuCaps(0), { msixEnabled: true });
  new DataView(space.buffer).setUint16(0x04, 0x400, true); // INTx disabled
  config.spaces.set(TARGET, space);
  await VirtioPciTransport.open(new FakeVirtioPciBus(device, memory, LINE), config, TARGET, [BAR4], {
    memory,
    dma: new DmaPool(memory, 0x1000, 0x10000),
    intxLine: q35IntxLine,
  });
  const view = new DataView(space.buffer);
  assert.equal(view.getUint16(0x04, true) & 0x406, 0x006);
  assert.equal(view.getUint16(0x42, true) & 0x8000, 0, 'MSI-X enable cleared: the device interrupts through INTx');
});

test('features: each 32-bit half through its select register, 32-bit accesses only', async () => {
  const { bus, transport } = await open(new RngDevice());
  const offered = await transport.deviceFeatures();
  assert.equal(offered, bus.state.offeredFeatures);
  await transport.setDriverFeatures(offered & ~(1n << BigInt(Feature.RING_PACKED)));
  assert.equal(bus.state.driverFeatures, offered & ~(1n << BigInt(Feature.RING_PACKED)));
  assert.deepEqual(
    common(bus.accesses).map((a) => [a.op, a.offset, a.width, a.value]),
    [
      ['write', CommonCfg.DEVICE_FEATURE_SELECT, 4, 0],
      ['read', CommonCfg.DEVICE_FEATURE, 4, Number(offered & 0xffff_ffffn)],
      ['write', CommonCfg.DEVICE_FEATURE_SELECT, 4, 1],
      ['read', CommonCfg.DEVICE_FEATURE, 4, Number(offered >> 32n)],
      ['write', CommonCfg.DRIVER_FEATURE_SELECT, 4, 0],
      ['write', CommonCfg.DRIVER_FEATURE, 4, Number(offered & 0xffff_ffffn)],
      ['write', CommonCfg.DRIVER_FEATURE_SELECT, 4, 1],
      ['write', CommonCfg.DRIVER_FEATURE, 4, Number((offered & ~(1n << BigInt(Feature.RING_PACKED))) >> 32n)],
    ],
  );
  await assert.rejects(transport.setDriverFeatures(1n << 64n), /do not fit in 64 bits/);
});

test('reset writes 0 and reads device_status until it reads 0, a bounded number of times (§4.1.4.3.2)', async () => {
  const { bus, transport } = await open(new RngDevice());
  await transport.setStatus(DeviceStatus.ACKNOWLEDGE);
  bus.resetReads = 5;
  await transport.reset();
  const statusReads = common(bus.accesses).filter((a) => a.op === 'read' && a.offset === CommonCfg.DEVICE_STATUS);
  assert.deepEqual(statusReads.map((a) => a.value), [1, 1, 1, 1, 1, 0], 'polled until the device finished');

  await transport.setStatus(DeviceStatus.ACKNOWLEDGE);
  bus.resetReads = 5000;
  await assert.rejects(transport.reset(), /did not reset: device_status still reads 0x1 after 1000 reads/);
});

test('rng driver end to end: queue set up through the common configuration, notifies at offset queue_notify_off × multiplier', async () => {
  for (const packed of [false, true]) {
    const { bus, transport } = await open(new RngDevice({ maxQueueSize: 16 }), { multiplier: 8 });
    bus.notifyOff = () => 3;
    const rng = await RngDriver.open(transport, { packed, chunkBytes: 100 });
    assert.equal(hasFeature(rng.core.features, Feature.RING_PACKED), packed);
    const data = await rng.read(1000);
    assert.equal(data.length, 1000);
    assert.ok(data.some((b) => b !== 0));
    const notifies = bus.accesses.filter((a) => a.structure === 'NOTIFY');
    assert.ok(notifies.length > 0);
    for (const n of notifies) assert.deepEqual([n.op, n.offset, n.width, n.value], ['write', 24, 2, 0], '3 × 8, 16 bits, the queue index');
    assert.equal(bus.state.queueSize(0), 16);
    assert.ok(bus.accesses.some((a) => a.structure === 'ISR' && a.value === 1), 'completions arrived as ISR queue interrupts');
    await rng.close();
    assert.equal(bus.state.status, 0, 'closing resets the device');
  }
});

test('a queue_notify_off beyond the notification structure is refused before the queue is enabled (§4.1.4.4)', async () => {
  const { bus, transport } = await open(new RngDevice());
  bus.notifyOff = () => 0x400; // × 4 = 0x1000, the structure's whole length
  await assert.rejects(RngDriver.open(transport), /queue_notify_off 1024 × 4 lies outside the 4096-byte notification structure/);
  assert.equal(bus.state.queueReady(0), false);
  assert.ok(bus.state.status & DeviceStatus.FAILED, 'the driver gave up with FAILED');
});

test('a configuration change arrives through ISR bit 1; device configuration fields are read with their own width', async () => {
  const device = new BlkDevice({ backend: new MemoryBackend(2048 * 512) });
  const { bus, transport } = await open(device);
  const changed = new Promise<void>((resolve) => transport.setInterruptHandlers({ queue: () => {}, config: resolve }));
  const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK } = DeviceStatus;
  await transport.setStatus(ACKNOWLEDGE | DRIVER);
  await transport.setDriverFeatures(1n << BigInt(Feature.VERSION_1));
  await transport.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
  await transport.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  assert.equal(await transport.getStatus(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  bus.state.configChanged();
  await changed;
  assert.ok(bus.accesses.some((a) => a.structure === 'ISR' && a.value === 2), 'ISR read with the configuration bit');
  assert.equal(bus.interruptLevel(LINE), false, 'the ISR read deasserted the line');

  bus.accesses.length = 0;
  const bytes = await transport.readConfig(0, 11);
  assert.equal(new DataView(bytes.buffer).getBigUint64(0, true), 2048n, 'capacity');
  assert.deepEqual(bus.accesses.map((a) => [a.structure, a.offset, a.width]), [
    ['DEVICE', 0, 4],
    ['DEVICE', 4, 4],
    ['DEVICE', 8, 2],
    ['DEVICE', 10, 1],
  ]);
  await assert.rejects(transport.readConfig(device.config.length - 2, 4), /outside its/);
});

test('a device without a device configuration structure refuses configuration access with an error', async () => {
  const { transport } = await open(new RngDevice());
  await assert.rejects(transport.readConfig(0, 1), /no device configuration structure/);
});

test('a line that stays asserted is serviced a bounded number of times, not forever', async () => {
  let warned!: (msg: string) => void;
  const warning = new Promise<string>((resolve) => (warned = resolve));
  const log = pino({ level: 'warn' }, { write: (line: string) => warned((JSON.parse(line) as { msg: string }).msg) });
  const { bus, transport } = await open(new RngDevice(), { log });
  bus.stuckLine = true;
  let configs = 0;
  transport.setInterruptHandlers({ queue: () => {}, config: () => configs++ });
  bus.raise(2);
  assert.match(await warning, /interrupt line 20 stayed asserted over 64 ISR reads/);
  assert.equal(bus.accesses.filter((a) => a.structure === 'ISR').length, 64);
  assert.equal(configs, 1, 'the configuration change was dispatched once; the other reads found ISR clear');
});
