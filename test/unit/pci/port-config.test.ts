import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { GuestBus } from '../../../src/transports/qtest/guest-bus.ts';
import { bdf } from '../../../src/transports/pci/config.ts';
import { PciConfig } from '../../../src/transports/pci/port-config.ts';
import { Q35_BAR_WINDOWS, q35IntxLine } from '../../../src/transports/pci/q35.ts';

interface FakeFunction {
  readonly config: DataView;
  /** Per BAR register: the bits software can write (0 for an unimplemented register). */
  readonly writable: number[];
  /** Per BAR register: the read-only type bits (I/O, 64-bit, prefetchable). */
  readonly flags: number[];
}

/**
 * Port I/O of a PC with PCI configuration mechanism #1 and a few functions on bus 0; memory
 * accesses are not expected and fail the test.
 */
class FakePciBus implements GuestBus {
  private address = 0;
  readonly functions = new Map<number, FakeFunction>();

  add(target: number, vendorDevice: number, bars: readonly { flags: number; size: number }[], headerType = 0): FakeFunction {
    const config = new DataView(new ArrayBuffer(256));
    config.setUint32(0, vendorDevice, true);
    config.setUint8(0x0e, headerType);
    const writable: number[] = [];
    const flags: number[] = [];
    bars.forEach((bar, i) => {
      config.setUint32(0x10 + 4 * i, bar.flags, true);
      writable.push(bar.size === 0 ? 0 : (~(bar.size - 1) & ~0xf) >>> 0);
      flags.push(bar.flags);
    });
    const fn = { config, writable, flags };
    this.functions.set(target, fn);
    return fn;
  }

  private target(): { fn: FakeFunction; offset: number } | undefined {
    if (!(this.address & 0x8000_0000)) return undefined;
    const fn = this.functions.get((this.address >>> 8) & 0xffff);
    return fn && { fn, offset: this.address & 0xfc };
  }

  private configRead(port: number, size: number): number {
    const t = this.target();
    if (!t) return size === 4 ? 0xffff_ffff : (1 << (size * 8)) - 1;
    const at = t.offset + (port - 0xcfc);
    return size === 1 ? t.fn.config.getUint8(at) : size === 2 ? t.fn.config.getUint16(at, true) : t.fn.config.getUint32(at, true);
  }

  private configWrite(port: number, size: number, value: number): void {
    const t = this.target();
    if (!t) return;
    const at = t.offset + (port - 0xcfc);
    const bar = (at - 0x10) / 4;
    if (size === 4 && Number.isInteger(bar) && bar >= 0 && bar < 6) {
      const mask = t.fn.writable[bar] ?? 0;
      t.fn.config.setUint32(at, ((value & mask) | (t.fn.flags[bar] ?? 0)) >>> 0, true);
    } else if (size === 1) t.fn.config.setUint8(at, value);
    else if (size === 2) t.fn.config.setUint16(at, value, true);
    else t.fn.config.setUint32(at, value, true);
  }

  async inU8(port: number): Promise<number> {
    return this.configRead(port, 1);
  }
  async inU16(port: number): Promise<number> {
    return this.configRead(port, 2);
  }
  async inU32(port: number): Promise<number> {
    return port === 0xcf8 ? this.address : this.configRead(port, 4);
  }
  async outU8(port: number, value: number): Promise<void> {
    this.configWrite(port, 1, value);
  }
  async outU16(port: number, value: number): Promise<void> {
    this.configWrite(port, 2, value);
  }
  async outU32(port: number, value: number): Promise<void> {
    if (port === 0xcf8) this.address = value >>> 0;
    else this.configWrite(port, 4, value);
  }

  private unexpected(): never {
    throw new Error('PCI configuration must not touch memory');
  }
  read = async (): Promise<Uint8Array> => this.unexpected();
  write = async (): Promise<void> => this.unexpected();
  fill = async (): Promise<void> => this.unexpected();
  readU8 = async (): Promise<number> => this.unexpected();
  readU16 = async (): Promise<number> => this.unexpected();
  readU32 = async (): Promise<number> => this.unexpected();
  readU64 = async (): Promise<bigint> => this.unexpected();
  writeU8 = async (): Promise<void> => this.unexpected();
  writeU16 = async (): Promise<void> => this.unexpected();
  writeU32 = async (): Promise<void> => this.unexpected();
  writeU64 = async (): Promise<void> => this.unexpected();
  interruptLevel = (): boolean => false;
  onInterrupt = (): (() => void) => () => {};
}

test('enumeration lists present functions, and the other functions of multi-function devices only', async () => {
  const bus = new FakePciBus();
  bus.add(bdf(0, 0, 0), 0x29c0_8086, []);
  bus.add(bdf(0, 3, 0), 0x1042_1af4, []);
  bus.add(bdf(0, 3, 2), 0x1234_1af4, []); // not reported: device 3 is single-function
  bus.add(bdf(0, 0x1f, 0), 0x2918_8086, [], 0x80);
  bus.add(bdf(0, 0x1f, 3), 0x2930_8086, []);
  const functions = await new PciConfig(bus, Q35_BAR_WINDOWS).functions();
  assert.deepEqual(
    functions.map((f) => [f.bdf, f.vendorId, f.deviceId]),
    [
      [bdf(0, 0, 0), 0x8086, 0x29c0],
      [bdf(0, 3, 0), 0x1af4, 0x1042],
      [bdf(0, 0x1f, 0), 0x8086, 0x2918],
      [bdf(0, 0x1f, 3), 0x8086, 0x2930],
    ],
  );
});

test('BARs are sized, naturally aligned in their window, 64-bit ones take two registers, and decoding is enabled', async () => {
  const bus = new FakePciBus();
  const fn = bus.add(bdf(0, 4, 0), 0x1000_1af4, [
    { flags: 0x1, size: 0x80 }, // I/O
    { flags: 0x0, size: 0x1000 }, // 32-bit memory
    { flags: 0x0, size: 0 }, // unimplemented
    { flags: 0x0, size: 0 },
    { flags: 0xc, size: 0x4000 }, // 64-bit prefetchable memory, upper half in BAR 5
  ]);
  // The upper half of the 64-bit BAR is all writable.
  fn.writable[5] = 0xffff_ffff;
  fn.flags[5] = 0;
  const pci = new PciConfig(bus, Q35_BAR_WINDOWS);
  const bars = await pci.assignBars(bdf(0, 4, 0));
  assert.deepEqual(bars, [
    { index: 0, kind: 'io', addr: 0xc000, size: 0x80, wide: false },
    { index: 1, kind: 'memory', addr: 0xe000_0000, size: 0x1000, wide: false },
    { index: 4, kind: 'memory', addr: 0xe000_4000, size: 0x4000, wide: true },
  ]);
  assert.equal(fn.config.getUint32(0x10, true), 0xc001, 'the I/O flag survives the assignment');
  assert.equal(fn.config.getUint32(0x20, true), 0xe000_400c);
  assert.equal(fn.config.getUint32(0x24, true), 0, 'placed below 4 GiB');
  assert.equal(fn.config.getUint16(0x04, true) & 0x7, 0x7, 'I/O, memory and bus master enabled');

  // A second device continues where the first ended, aligned to its own size.
  bus.add(bdf(0, 5, 0), 0x1001_1af4, [{ flags: 0x0, size: 0x2000 }]);
  const next = await pci.assignBars(bdf(0, 5, 0));
  assert.deepEqual(next, [{ index: 0, kind: 'memory', addr: 0xe000_8000, size: 0x2000, wide: false }]);
});

test('configuration offsets that mechanism #1 cannot express are refused without any access', async () => {
  const bus = new FakePciBus();
  let accesses = 0;
  const counted = new Proxy(bus, {
    get(target, key, receiver) {
      const value: unknown = Reflect.get(target, key, receiver);
      if (typeof key === 'string' && /^(in|out)U/.test(key) && typeof value === 'function') {
        return (...args: unknown[]) => {
          accesses++;
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      }
      return value;
    },
  });
  const pci = new PciConfig(counted, Q35_BAR_WINDOWS);
  await assert.rejects(pci.read(bdf(0, 1, 0), 0x100, 4), /offset 256/);
  await assert.rejects(pci.read(bdf(0, 1, 0), 0x2, 4), /4-byte aligned/);
  await assert.rejects(pci.write(bdf(0, 1, 0), 0x3, 2, 0), /2-byte aligned/);
  await assert.rejects(pci.read(0x10000, 0, 4), /not a bus\/device\/function/);
  assert.throws(() => bdf(0, 32, 0), /PCI device 32/);
  assert.equal(accesses, 0);
});

test('a BAR that does not fit the rest of its window is refused with an error naming it; windows are checked', async () => {
  const bus = new FakePciBus();
  bus.add(bdf(0, 6, 0), 0x1000_1af4, [{ flags: 0x0, size: 0x1000 }, { flags: 0x0, size: 0x1_0000 }]);
  const pci = new PciConfig(bus, { memory: { start: 0xe000_0000, end: 0xe000_8000 }, io: { start: 0xc000, end: 0xd000 } });
  await assert.rejects(pci.assignBars(bdf(0, 6, 0)), /no room for BAR 1 \(65536 bytes\) of 00:06\.0 in the memory window/);
  assert.throws(() => new PciConfig(bus, { memory: { start: 0xe000_0000, end: 0x1_0000_1000 }, io: Q35_BAR_WINDOWS.io }), /memory BAR window/);
  assert.throws(() => new PciConfig(bus, { memory: Q35_BAR_WINDOWS.memory, io: { start: 0xd000, end: 0xc000 } }), /I\/O BAR window/);
});

test('q35 INTx routing: slots 0..24 round-robin over PIRQ E..H (GSI 20..23); other slots and pins are refused', () => {
  assert.deepEqual([0, 1, 2, 3, 4].map((slot) => q35IntxLine(slot, 1)), [20, 21, 22, 23, 20]);
  assert.deepEqual([1, 2, 3, 4].map((pin) => q35IntxLine(5, pin)), [21, 22, 23, 20]);
  assert.throws(() => q35IntxLine(25, 1), /slot 25 is not fixed/);
  assert.throws(() => q35IntxLine(3, 0), /interrupt pin 0/);
});
