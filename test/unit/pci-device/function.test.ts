/**
 * The PCI function layer on its own: BAR sizing for 32- and 64-bit BARs, a capability list the
 * driver side walks, per-bit write masks, INTx as Status.Interrupt and Interrupt Disable see it,
 * and reset.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { listCapabilities } from '../../../src/transports/pci/capabilities.ts';
import { PciFunction, type BarHandler } from '../../../src/transports/pci-device/function.ts';

const bar = (size: number, wide = false): BarHandler => ({ size, wide, read: (_o, d) => d.fill(0xab), write: () => {} });

function fn(): PciFunction {
  return new PciFunction({
    identity: { vendorId: 0x1b36, deviceId: 0x0100, subsystemVendorId: 0x1af4, subsystemId: 0x1100, revision: 5, classCode: 0x03_00_00 },
    bars: [bar(0x400_0000), undefined, bar(0x2000, true)],
    capabilities: [
      { id: 0x09, body: new Uint8Array([4, 0xaa]) },
      { id: 0x05, body: new Uint8Array(12), writable: new Uint8Array([0xff, 0xff]) },
    ],
    interruptPin: 1,
  });
}

const read = (f: PciFunction, offset: number, width: number): number => {
  const out = new Uint8Array(width);
  f.readConfig(offset, out);
  return out.reduceRight((v, b) => v * 256 + b, 0);
};
const write = (f: PciFunction, offset: number, width: number, value: number): void => {
  f.writeConfig(offset, new Uint8Array(Array.from({ length: width }, (_, i) => (value >>> (8 * i)) & 0xff)));
};

test('identity, class code and the capability list as a driver walks it', () => {
  const f = fn();
  assert.equal(read(f, 0, 4), 0x0100_1b36);
  assert.equal(read(f, 8, 4), 0x0300_0005, 'class code and revision');
  const space = new Uint8Array(256);
  f.readConfig(0, space);
  assert.deepEqual(listCapabilities(space).map((c) => [c.id, c.offset]), [[0x09, 0x40], [0x05, 0x44]]);
  assert.equal(read(f, 0x3d, 1), 1, 'INTA#');
});

test('BAR sizing: 32-bit and 64-bit BARs read back their size masks; unimplemented BARs stay zero', () => {
  const f = fn();
  for (const at of [0x10, 0x14, 0x18, 0x1c]) write(f, at, 4, 0xffff_ffff);
  assert.equal(read(f, 0x10, 4), 0xfc00_0000);
  assert.equal(read(f, 0x14, 4), 0, 'BAR 1 is not implemented');
  assert.equal(read(f, 0x18, 4), 0xffff_e004, '64-bit memory BAR of 8 KiB');
  assert.equal(read(f, 0x1c, 4), 0xffff_ffff, 'its upper half');
  write(f, 0x10, 4, 0xfe00_0000);
  assert.equal(read(f, 0x10, 4), 0xfc00_0000, 'address bits below the size stay zero');
});

test('only writable bits change; INTx shows in Status and obeys Interrupt Disable; reset restores the space', () => {
  const f = fn();
  write(f, 0, 4, 0);
  assert.equal(read(f, 0, 2), 0x1b36, 'identity is read-only');
  write(f, 0x46, 2, 0xbeef);
  assert.equal(read(f, 0x46, 2), 0xbeef, 'a capability\'s writable bytes');
  write(f, 0x48, 2, 0xbeef);
  assert.equal(read(f, 0x48, 2), 0, 'and only those');
  f.setIntx(true);
  assert.ok(read(f, 6, 2) & 0x08, 'Status.Interrupt');
  assert.equal(f.intxAsserted, true);
  write(f, 4, 2, 0x0400);
  assert.equal(f.intxAsserted, false, 'Interrupt Disable holds the line low');
  assert.ok(read(f, 6, 2) & 0x08, 'Status still reports the condition');
  f.reset();
  assert.equal(read(f, 4, 2), 0);
  assert.equal(read(f, 0x46, 2), 0);
  assert.equal(read(f, 6, 2) & 0x08, 0);
});

test('out-of-range offsets read zero and write nothing', () => {
  const f = fn();
  const out = new Uint8Array(8).fill(7);
  f.readConfig(0xfc, out);
  assert.deepEqual([...out.subarray(4)], [0, 0, 0, 0]);
  f.readConfig(-1, out);
  assert.deepEqual([...out], [0, 0, 0, 0, 0, 0, 0, 0]);
  f.writeConfig(300, new Uint8Array([1]));
  f.writeConfig(Number.NaN, new Uint8Array([1]));
  assert.equal(read(f, 0, 2), 0x1b36);
});

test('an I/O BAR: bit 0 set, sized like memory, decoded only with I/O space enabled; barAddress follows the command register', () => {
  const f = new PciFunction({
    identity: { vendorId: 0x1b36, deviceId: 0x0100, subsystemVendorId: 0x1af4, subsystemId: 0x1100, revision: 4, classCode: 0x03_80_00 },
    bars: [bar(0x1000), undefined, undefined, { ...bar(32), io: true }],
    capabilities: [],
    interruptPin: 1,
  });
  assert.equal(read(f, 0x1c, 4), 0x1, 'an I/O BAR reads back bit 0');
  write(f, 0x1c, 4, 0xffff_ffff);
  assert.equal(read(f, 0x1c, 4) >>> 0, 0xffff_ffe1, '32 ports: address bits from bit 5');
  write(f, 0x1c, 4, 0xc040);
  write(f, 0x10, 4, 0xe000_0000);
  assert.equal(f.barAddress(3), undefined, 'not decoded before Command.IO');
  assert.equal(f.barAddress(0), undefined, 'not decoded before Command.MEMORY');
  write(f, 0x04, 2, 0x3);
  assert.equal(read(f, 0x04, 2), 0x3, 'I/O space is writable with an I/O BAR');
  assert.equal(f.barAddress(3), 0xc040);
  assert.equal(f.barAddress(0), 0xe000_0000, 'a high address reads back unsigned');
  assert.equal(f.barAddress(1), undefined, 'an absent BAR has no address');
});
