import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MmioDevice } from '../../../src/transports/mmio/device.ts';
import { MmioDriverTransport } from '../../../src/transports/mmio/driver.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { MmioReg } from '../../../src/transports/mmio/registers.ts';
import type { AccessWidth, MmioRegisterAccess } from '../../../src/transports/mmio/registers.ts';
import { DeviceStatus, Feature, featureBit } from '../../../src/virtio/constants.ts';
import { DmaPool } from '../../../src/virtio/dma.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { placeSplitRing } from '../../../src/virtio/split-ring.ts';
import { ScriptedDevice, captureLog } from '../virtio/framework-fixture.ts';

function registerFile(device = new ScriptedDevice(undefined, 2, 16, featureBit(Feature.EVENT_IDX) | 0b101n)) {
  const memory = GuestMemory.allocate(0x10000);
  const line: boolean[] = [];
  const { log, lines } = captureLog();
  const regs = new MmioDevice(device, memory, { vendorId: 0x1af4, interrupt: (a) => line.push(a), log });
  return { regs, device, memory, line, lines };
}

test('identification registers: magic "virt", version 2, device and vendor IDs', () => {
  const { regs } = registerFile();
  assert.equal(regs.read(MmioReg.MAGIC_VALUE, 4), 0x74726976);
  assert.equal(regs.read(MmioReg.VERSION, 4), 2);
  assert.equal(regs.read(MmioReg.DEVICE_ID, 4), 0x7f);
  assert.equal(regs.read(MmioReg.VENDOR_ID, 4), 0x1af4);
});

test('feature words are windows chosen by the select registers', () => {
  const { regs } = registerFile();
  regs.write(MmioReg.DEVICE_FEATURES_SEL, 4, 0);
  assert.equal(regs.read(MmioReg.DEVICE_FEATURES, 4), (0b101 | (1 << Feature.EVENT_IDX)) >>> 0);
  regs.write(MmioReg.DEVICE_FEATURES_SEL, 4, 1);
  assert.equal(regs.read(MmioReg.DEVICE_FEATURES, 4), 1, 'VERSION_1');
  regs.write(MmioReg.DEVICE_FEATURES_SEL, 4, 2);
  assert.equal(regs.read(MmioReg.DEVICE_FEATURES, 4), 0);

  regs.write(MmioReg.STATUS, 4, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
  regs.write(MmioReg.DRIVER_FEATURES_SEL, 4, 1);
  regs.write(MmioReg.DRIVER_FEATURES, 4, 1);
  regs.write(MmioReg.DRIVER_FEATURES_SEL, 4, 0);
  regs.write(MmioReg.DRIVER_FEATURES, 4, 0b100);
  assert.equal(regs.state.driverFeatures, featureBit(Feature.VERSION_1) | 0b100n);
});

test('queue registers act on the selected queue; QueueSizeMax is 0 for a queue that does not exist', () => {
  const { regs } = registerFile();
  regs.write(MmioReg.QUEUE_SEL, 4, 1);
  assert.equal(regs.read(MmioReg.QUEUE_SIZE_MAX, 4), 16);
  const ring = placeSplitRing(0x1000, 8);
  regs.write(MmioReg.QUEUE_SIZE, 4, 8);
  regs.write(MmioReg.QUEUE_DESC_LOW, 4, ring.desc);
  regs.write(MmioReg.QUEUE_DESC_HIGH, 4, 0);
  regs.write(MmioReg.QUEUE_DRIVER_LOW, 4, ring.driver);
  regs.write(MmioReg.QUEUE_DEVICE_LOW, 4, ring.device);
  regs.write(MmioReg.QUEUE_READY, 4, 1);
  assert.equal(regs.read(MmioReg.QUEUE_READY, 4), 1);
  assert.equal(regs.state.queueArea(1, 'driver'), ring.driver);
  regs.write(MmioReg.QUEUE_SEL, 4, 0);
  assert.equal(regs.read(MmioReg.QUEUE_READY, 4), 0);
  regs.write(MmioReg.QUEUE_SEL, 4, 2);
  assert.equal(regs.read(MmioReg.QUEUE_SIZE_MAX, 4), 0);
});

test('control registers take only aligned 32-bit accesses; shared memory regions read as absent', () => {
  const { regs } = registerFile();
  assert.equal(regs.read(MmioReg.MAGIC_VALUE, 2), 0);
  assert.equal(regs.read(MmioReg.MAGIC_VALUE + 1, 4), 0);
  regs.write(MmioReg.STATUS, 1, DeviceStatus.ACKNOWLEDGE);
  assert.equal(regs.read(MmioReg.STATUS, 4), 0);
  assert.equal(regs.read(MmioReg.SHM_LEN_LOW, 4), 0xffffffff);
  assert.equal(regs.read(MmioReg.SHM_BASE_HIGH, 4), 0xffffffff);
  assert.equal(regs.read(0x0f0, 4), 0, 'an unknown offset');
});

test('config space at 0x100 in 8, 16 and 32-bit little-endian accesses; the generation follows device changes', () => {
  const { regs, device } = registerFile();
  device.config.set([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
  assert.equal(regs.read(MmioReg.CONFIG, 4), 0x44332211);
  assert.equal(regs.read(MmioReg.CONFIG + 6, 2), 0x8877);
  assert.equal(regs.read(MmioReg.CONFIG + 5, 1), 0x66);
  assert.equal(regs.read(MmioReg.CONFIG + 7, 4), 0x88, 'bytes past the end read as zero');
  regs.write(MmioReg.CONFIG + 2, 2, 0xbeef);
  assert.deepEqual([...device.config.subarray(2, 4)], [0xef, 0xbe]);
  const g = regs.read(MmioReg.CONFIG_GENERATION, 4);
  regs.state.configChanged();
  assert.equal(regs.read(MmioReg.CONFIG_GENERATION, 4), g + 1);
});

test('InterruptStatus holds events until acknowledged; the line follows; reset clears it', () => {
  const { regs, device, line } = registerFile();
  regs.write(MmioReg.STATUS, 4, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
  regs.write(MmioReg.DRIVER_FEATURES_SEL, 4, 1);
  regs.write(MmioReg.DRIVER_FEATURES, 4, 1);
  regs.write(MmioReg.STATUS, 4, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
  regs.write(MmioReg.STATUS, 4, 0xf);
  device.ctx!.configChanged();
  assert.equal(regs.read(MmioReg.INTERRUPT_STATUS, 4), 2);
  assert.deepEqual(line, [true]);
  regs.write(MmioReg.INTERRUPT_ACK, 4, 1);
  assert.equal(regs.read(MmioReg.INTERRUPT_STATUS, 4), 2, 'acknowledging another bit leaves it');
  regs.write(MmioReg.INTERRUPT_ACK, 4, 2);
  assert.equal(regs.read(MmioReg.INTERRUPT_STATUS, 4), 0);
  assert.deepEqual(line, [true, false]);
  device.ctx!.configChanged();
  regs.write(MmioReg.STATUS, 4, 0);
  assert.equal(regs.read(MmioReg.INTERRUPT_STATUS, 4), 0);
  assert.equal(regs.interruptAsserted, false);
});

/** Register access that forwards to `inner` except where `override` answers a read. */
function tamper(inner: MmioRegisterAccess, override: (offset: number) => number | undefined): MmioRegisterAccess {
  return {
    read: (offset: number, width: AccessWidth) => override(offset) ?? inner.read(offset, width),
    write: (offset: number, width: AccessWidth, value: number) => inner.write(offset, width, value),
  };
}

test('the driver transport refuses a wrong magic value or a legacy version with a clear error', async () => {
  const { regs, memory } = registerFile();
  const dma = new DmaPool(memory, 0, 0x10000);
  const badMagic = new MmioDriverTransport(tamper(regs, (o) => (o === MmioReg.MAGIC_VALUE ? 0x12345678 : undefined)), memory, dma);
  await assert.rejects(badMagic.deviceId(), /not a virtio-mmio device: MagicValue is 0x12345678/);
  const legacy = new MmioDriverTransport(tamper(regs, (o) => (o === MmioReg.VERSION ? 1 : undefined)), memory, dma);
  await assert.rejects(legacy.deviceId(), /Version 1 is not supported/);
  const good = new MmioDriverTransport(regs, memory, dma);
  assert.equal(await good.deviceId(), 0x7f);
});

test('the driver transport probes the queue count, reads config fields whole, and sees a refused queue', async () => {
  const { transport, host } = createLoopback(new ScriptedDevice(undefined, 3), { memoryBytes: 0x10000 });
  assert.equal(await transport.numQueues(), 3);
  host.state.device.config.set([1, 0, 0, 0, 2, 0, 3, 4]);
  assert.deepEqual([...(await transport.readConfig(1, 7))], [0, 0, 0, 2, 0, 3, 4]);
  await transport.writeConfig(4, new Uint8Array([9, 8, 7]));
  assert.deepEqual([...host.state.device.config.subarray(4, 7)], [9, 8, 7]);
  const ring = placeSplitRing(0x1000, 16);
  await assert.rejects(transport.enableQueue(0, 12, ring), /device refused queue 0 of size 12/);
  await assert.rejects(transport.enableQueue(0, 32, ring), /size 32 exceeds the device's maximum 16/);
});

test('interrupts reach the driver on a later turn and are dispatched to config or to the enabled queues', async () => {
  const device = new ScriptedDevice(undefined, 2);
  const { transport, host } = createLoopback(device, { memoryBytes: 0x10000 });
  const seen: string[] = [];
  transport.setInterruptHandlers({ queue: (q) => seen.push(`queue ${q}`), config: () => seen.push('config') });
  await transport.reset();
  await transport.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
  await transport.setDriverFeatures(featureBit(Feature.VERSION_1));
  await transport.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
  await transport.enableQueue(1, 8, placeSplitRing(0x1000, 8));
  await transport.setStatus(0xf);
  device.ctx!.configChanged();
  host.state.usedBuffer(1);
  assert.deepEqual(seen, [], 'not inside the device call');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(seen, ['config', 'queue 1']);
  assert.equal(host.interruptAsserted, false, 'the driver acknowledged both');
});
