import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { MmioDevice } from '../../../src/transports/mmio/device.ts';
import { MmioReg } from '../../../src/transports/mmio/registers.ts';
import type { AccessWidth } from '../../../src/transports/mmio/registers.ts';
import { DeviceStatus, Feature, featureBit } from '../../../src/virtio/constants.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { captureLog } from '../virtio/framework-fixture.ts';

const MEMORY_BYTES = 0x4000;

/** Writes a hostile driver might make: real registers with plausible or garbage values, and anything else. */
const access = fc.oneof(
  fc.record({
    offset: fc.constantFrom(...Object.values(MmioReg), MmioReg.CONFIG + 3),
    width: fc.constantFrom<AccessWidth>(4, 4, 4, 2, 1),
    value: fc.oneof(
      fc.integer({ min: 0, max: 0xff }),
      fc.constantFrom(0, 1, 2, 3, 4, 8, 16, 0x40, 0x80, 0xb, 0xf),
      fc.integer({ min: 0, max: MEMORY_BYTES }).map((a) => a & ~0xf),
      fc.integer({ min: 0, max: 0xffff_ffff }),
    ),
  }),
  fc.record({ offset: fc.integer({ min: 0, max: 0x200 }), width: fc.constantFrom<AccessWidth>(1, 2, 4), value: fc.nat() }),
);

test('property: any sequence of register writes leaves the device consistent and never throws', () => {
  fc.assert(
    fc.property(fc.array(access, { maxLength: 80 }), (writes) => {
      const memory = GuestMemory.allocate(MEMORY_BYTES);
      const { log } = captureLog();
      const regs = new MmioDevice(new RngDevice({ maxQueueSize: 8 }), memory, { log });
      for (const w of writes) {
        regs.write(w.offset, w.width, w.value);
        regs.read(w.offset, w.width);
        const s = regs.state;
        const status = s.status;
        if (status & DeviceStatus.FEATURES_OK) {
          assert.equal(s.driverFeatures & ~s.offeredFeatures, 0n, 'FEATURES_OK only for an offered subset');
          assert.notEqual(s.driverFeatures & featureBit(Feature.VERSION_1), 0n, 'FEATURES_OK only with VERSION_1');
        }
        if (status & DeviceStatus.DRIVER_OK) assert.ok(status & DeviceStatus.FEATURES_OK, 'DRIVER_OK only after FEATURES_OK');
        if (s.queueReady(0)) assert.ok([1, 2, 4, 8].includes(s.queueSize(0)) || (s.driverFeatures & featureBit(Feature.RING_PACKED)) !== 0n);
        assert.equal(regs.read(MmioReg.MAGIC_VALUE, 4), 0x74726976);
      }
    }),
    { numRuns: 300 },
  );
});

test('property: a started device fed garbage rings either serves or needs reset, logging at most one line', () => {
  const ringFeatures = [Feature.RING_PACKED, Feature.EVENT_IDX, Feature.INDIRECT_DESC];
  fc.assert(
    fc.property(
      fc.subarray(ringFeatures),
      fc.integer({ min: 1, max: 8 }),
      fc.array(fc.integer({ min: 0, max: MEMORY_BYTES / 16 - 1 }).map((n) => n * 16), { minLength: 3, maxLength: 3 }),
      fc.uint8Array({ minLength: MEMORY_BYTES, maxLength: MEMORY_BYTES }),
      (bits, size, [desc, driver, device], garbage) => {
        const memory = GuestMemory.allocate(MEMORY_BYTES);
        const { log, lines } = captureLog();
        const regs = new MmioDevice(new RngDevice({ maxQueueSize: 8 }), memory, { log });
        const features = bits.reduce((f, b) => f | featureBit(b), featureBit(Feature.VERSION_1));
        const w = (offset: number, value: number): void => regs.write(offset, 4, value);
        w(MmioReg.STATUS, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
        w(MmioReg.DRIVER_FEATURES_SEL, 0);
        w(MmioReg.DRIVER_FEATURES, Number(features & 0xffff_ffffn));
        w(MmioReg.DRIVER_FEATURES_SEL, 1);
        w(MmioReg.DRIVER_FEATURES, Number(features >> 32n));
        w(MmioReg.STATUS, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
        w(MmioReg.QUEUE_SEL, 0);
        w(MmioReg.QUEUE_SIZE, size);
        w(MmioReg.QUEUE_DESC_LOW, desc);
        w(MmioReg.QUEUE_DRIVER_LOW, driver);
        w(MmioReg.QUEUE_DEVICE_LOW, device);
        w(MmioReg.QUEUE_READY, 1);
        w(MmioReg.STATUS, 0xf);
        memory.slice(0, MEMORY_BYTES).set(garbage);
        for (let i = 0; i < 3; i++) w(MmioReg.QUEUE_NOTIFY, 0);
        assert.ok(regs.state.status & DeviceStatus.DRIVER_OK);
        assert.ok(lines.length <= 1, lines.map((l) => l.msg).join('\n'));
        assert.equal(lines.length === 1, (regs.state.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0);
      },
    ),
    { numRuns: 60 },
  );
});
