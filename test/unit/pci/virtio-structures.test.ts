import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { PciBar } from '../../../src/transports/pci/bars.ts';
import { CapabilityId, PciCapabilityError, listCapabilities } from '../../../src/transports/pci/capabilities.ts';
import { findVirtioStructures, VirtioPciCap } from '../../../src/transports/pci/virtio-structures.ts';
import { BAR4, Layout, configSpace, qemuCaps, type CapSpec } from './fixture.ts';

const { COMMON_CFG, NOTIFY_CFG, ISR_CFG, DEVICE_CFG } = VirtioPciCap;

test('QEMU\'s layout: each structure found in BAR 4 with the notify multiplier', () => {
  const s = findVirtioStructures(configSpace(2, qemuCaps(0x3c), { msixEnabled: false }), [BAR4]);
  assert.deepEqual(s.common, { bar: BAR4, offset: Layout.COMMON, length: 0x1000 });
  assert.deepEqual(s.isr, { bar: BAR4, offset: Layout.ISR, length: 0x1000 });
  assert.deepEqual(s.device, { bar: BAR4, offset: Layout.DEVICE, length: 0x3c });
  assert.deepEqual(s.notify, { bar: BAR4, offset: Layout.NOTIFY, length: 0x1000 });
  assert.equal(s.notifyOffMultiplier, 4);
  assert.equal(typeof s.pciCfg, 'number');
  assert.equal(findVirtioStructures(configSpace(4, qemuCaps(0)), [BAR4]).device, undefined, 'no device configuration: none reported');
});

test('the capability list is followed in order; a clear capability-list status bit means no list', () => {
  const space = configSpace(2, qemuCaps(8), { msixEnabled: false });
  const caps = listCapabilities(space);
  assert.deepEqual(caps.map((c) => c.id), [CapabilityId.MSIX, 9, 9, 9, 9, 9]);
  assert.deepEqual(caps.map((c) => c.offset), [0x40, 0x4c, 0x60, 0x74, 0x88, 0x9c]);
  space[0x06] = 0;
  assert.deepEqual(listCapabilities(space), []);
});

test('hostile lists: a loop, a pointer into the header, are refused with an error naming them', () => {
  const looped = configSpace(2, qemuCaps(8));
  const [first, second, third] = listCapabilities(looped).map((c) => c.offset);
  looped[third + 1] = second; // the third capability points back to the second
  assert.throws(() => listCapabilities(looped), new PciCapabilityError(`the capability list loops back to 0x${second.toString(16)}`));
  const self = configSpace(2, qemuCaps(8));
  self[first + 1] = first;
  assert.throws(() => listCapabilities(self), new RegExp(`loops back to 0x${first.toString(16)}`));
  const header = configSpace(2, qemuCaps(8));
  header[first + 1] = 0x10;
  assert.throws(() => listCapabilities(header), /pointer 0x10 points into the configuration header/);
  const start = configSpace(2, qemuCaps(8));
  start[0x34] = 0x3c;
  assert.throws(() => listCapabilities(start), /pointer 0x3c points into the configuration header/);
  assert.throws(() => findVirtioStructures(looped, [BAR4]), PciCapabilityError);
});

test('any configuration space at all: listing terminates within the 48 dword slots, inside the space, or refuses', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 256, maxLength: 256 }), (bytes) => {
      bytes[0x06] |= 0x10;
      let caps;
      try {
        caps = listCapabilities(bytes);
      } catch (err) {
        assert.ok(err instanceof PciCapabilityError);
        return;
      }
      assert.ok(caps.length <= 48);
      for (const c of caps) assert.ok(c.offset >= 0x40 && c.offset <= 0xfc && c.offset % 4 === 0);
      // And the virtio layer on top never throws anything but a PciCapabilityError.
      try {
        findVirtioStructures(bytes, [BAR4]);
      } catch (err) {
        assert.ok(err instanceof PciCapabilityError, String(err));
      }
    }),
    { numRuns: 500 },
  );
});

/** qemuCaps with the structure of `cfgType` replaced by `change(structure)`. */
function withCap(cfgType: number, change: (cap: CapSpec) => CapSpec[]): CapSpec[] {
  return qemuCaps(8).flatMap((cap) => (cap.cfgType === cfgType ? change(cap) : [cap]));
}

test('structures are checked against their BAR: unassigned BARs, ranges past the end, short or misaligned structures', () => {
  const cases: [CapSpec[], RegExp][] = [
    [withCap(COMMON_CFG, (c) => [{ ...c, bar: 2 }]), /common configuration capability at 0x[0-9a-f]+ is unusable: it names BAR 2, which is not an assigned BAR/],
    [withCap(COMMON_CFG, (c) => [{ ...c, offset: 0x3fd0 }]), /reaches past the end of BAR 4/],
    [withCap(ISR_CFG, (c) => [{ ...c, offset: 0xffff_ffff, length: 0xffff_ffff }]), /ISR status capability .* reaches past the end of BAR 4/],
    [withCap(COMMON_CFG, (c) => [{ ...c, length: 0x20 }]), /length 32 is below the 56 bytes/],
    [withCap(COMMON_CFG, (c) => [{ ...c, offset: 2 }]), /offset 0x2 is not 4-byte aligned/],
    [withCap(NOTIFY_CFG, (c) => [{ ...c, offset: 0x3001 }]), /not 2-byte aligned/],
    [withCap(NOTIFY_CFG, (c) => [{ ...c, multiplier: 3 }]), /notify_off_multiplier 3 is neither 0 nor an even power of 2/],
    [withCap(NOTIFY_CFG, (c) => [{ ...c, multiplier: 1 }]), /notify_off_multiplier 1/],
    [withCap(NOTIFY_CFG, (c) => [{ ...c, capLen: 16 }]), /cap_len 16 leaves out notify_off_multiplier/],
    [withCap(ISR_CFG, (c) => [{ ...c, capLen: 12 }]), /cap_len 12 does not hold a struct virtio_pci_cap/],
    [withCap(ISR_CFG, () => []), /the device has no ISR status capability/],
    [withCap(DEVICE_CFG, (c) => [{ ...c, offset: 0x3ffc }]), /device configuration capability .* reaches past the end of BAR 4/],
  ];
  for (const [caps, message] of cases) {
    assert.throws(() => findVirtioStructures(configSpace(2, caps), [BAR4]), message, String(message));
  }
});

test('a capability reaching past configuration space is unusable, even at the last dword', () => {
  const space = configSpace(2, qemuCaps(8));
  // Append an ISR capability at 0xf8 whose 16 bytes would end at 0x108, and make it the first ISR.
  const caps = listCapabilities(space);
  space[caps[caps.length - 1].offset + 1] = 0xf8;
  space.set([0x09, 0x00, 16, ISR_CFG, 4], 0xf8);
  const s = findVirtioStructures(space, [BAR4]);
  assert.equal(s.isr.offset, Layout.ISR, 'the well-formed ISR capability is the one used');
});

test('the first usable capability of each type wins; reserved cfg_type and bar values are ignored (§4.1.4)', () => {
  const io: PciBar = { index: 0, kind: 'io', addr: 0xc000, size: 0x40, wide: false };
  const caps: CapSpec[] = [
    { cfgType: 7, bar: 4, offset: 0, length: 1 },
    { cfgType: ISR_CFG, bar: 6, offset: 0, length: 1 },
    { cfgType: NOTIFY_CFG, bar: 0, offset: 0x10, length: 0x10, multiplier: 0 },
    { cfgType: DEVICE_CFG, bar: 1, offset: 0, length: 8 },
    ...qemuCaps(8),
  ];
  const s = findVirtioStructures(configSpace(2, caps), [io, BAR4]);
  assert.deepEqual(s.notify, { bar: io, offset: 0x10, length: 0x10 }, 'the device prefers its I/O notify structure');
  assert.equal(s.notifyOffMultiplier, 0);
  assert.equal(s.isr.bar, BAR4, 'the ISR capability naming bar 6 was ignored');
  assert.deepEqual(s.device, { bar: BAR4, offset: Layout.DEVICE, length: 8 }, 'BAR 1 is not assigned: the next one is used');
});
