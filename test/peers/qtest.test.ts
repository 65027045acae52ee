import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { QtestCommandError } from '../../src/transports/qtest/client.ts';
import { DeviceId } from '../../src/virtio/constants.ts';
import { startQtest, type QtestMachine } from '../lab/qtest.ts';
import { bdf } from '../../src/transports/pci/config.ts';
import { missingProgram } from '../lab/peers-env.ts';
import { requireLab } from '../lab/require.ts';

// One modern-only and one transitional virtio-blk at fixed slots, on a null disk.
const BLK_DEVICES = [
  '-blockdev', 'driver=null-co,node-name=null0,size=1048576',
  '-blockdev', 'driver=null-co,node-name=null1,size=1048576',
  '-device', 'virtio-blk-pci,drive=null0,addr=04.0,disable-legacy=on',
  '-device', 'virtio-blk-pci,drive=null1,addr=05.0,disable-legacy=off,disable-modern=off',
];

async function machine(t: TestContext, qemu: 'lab' | 'system', extra: { sharedRam?: boolean } = {}): Promise<QtestMachine | undefined> {
  if (!(qemu === 'lab' ? requireLab(t) : requireLab(t, missingProgram('qemu-system-x86_64', 'qemu-system-x86')))) return undefined;
  return startQtest({ devices: BLK_DEVICES, qemu, ...extra }, t);
}

/** §4.1.2: every virtio PCI device has this vendor id. */
const VIRTIO_VENDOR = 0x1af4;

for (const qemu of ['lab', 'system'] as const) {
  test(`${qemu} QEMU over qtest: PCI enumeration finds virtio-blk with the ids of §4.1.2`, async (t) => {
    const m = await machine(t, qemu);
    if (!m) return;
    const functions = await m.pci.functions();
    const at = (slot: number) => functions.find((f) => f.bdf === bdf(0, slot, 0));
    assert.deepEqual(at(0), { bdf: 0, vendorId: 0x8086, deviceId: 0x29c0 }, 'the q35 host bridge');
    // §4.1.2.1: a modern-only device uses 0x1040 + device id (2, block); a transitional one the legacy 0x1001.
    assert.deepEqual(at(4), { bdf: bdf(0, 4, 0), vendorId: VIRTIO_VENDOR, deviceId: 0x1040 + DeviceId.BLOCK });
    assert.deepEqual(at(5), { bdf: bdf(0, 5, 0), vendorId: VIRTIO_VENDOR, deviceId: 0x1001 });
    // §4.1.2.1: modern devices have revision 1 or higher; transitional ones revision 0.
    assert.ok((await m.pciConfigRead(bdf(0, 4, 0), 0x08, 1)) >= 1);
    assert.equal(await m.pciConfigRead(bdf(0, 5, 0), 0x08, 1), 0);
    // A transitional device's subsystem device id is the virtio device id (block = 2).
    assert.equal(await m.pciConfigRead(bdf(0, 5, 0), 0x2e, 2), DeviceId.BLOCK);
    const status = await m.pciConfigRead(bdf(0, 4, 0), 0x06, 2);
    assert.ok(status & 0x10, 'the capability list bit is set: virtio-pci structures live in capabilities (§4.1.4)');
    t.diagnostic(`QEMU ${m.qemu.version} (${m.accelerator}): ${functions.map((f) => `${(f.bdf >> 3).toString(16)}.${f.bdf & 7} ${f.vendorId.toString(16)}:${f.deviceId.toString(16)}`).join(', ')}`);
  });

  test(`${qemu} QEMU over qtest: configuration writes stick and guest RAM reads back what was written`, async (t) => {
    const m = await machine(t, qemu, { sharedRam: true });
    if (!m) return;
    const blk = bdf(0, 4, 0);
    await m.pciConfigWrite(blk, 0x04, 2, 0x0006); // memory space + bus master
    assert.equal((await m.pciConfigRead(blk, 0x04, 2)) & 0x0006, 0x0006);
    const data = new Uint8Array(100_000).map((_, i) => (i * 13 + 7) & 0xff);
    await m.bus.write(0x10_0000, data);
    assert.deepEqual(await m.bus.read(0x10_0000, data.length), data);
    await m.bus.writeU64(0x20_0000, 0x1122334455667788n);
    assert.equal(await m.bus.readU32(0x20_0004), 0x11223344);
    assert.ok(m.ramFile && m.memory);
    const ram = readFileSync(m.ramFile);
    assert.deepEqual(new Uint8Array(ram.subarray(0x10_0000, 0x10_0000 + data.length)), data, 'the shared RAM file is guest RAM');
    assert.deepEqual(m.memory.slice(0x10_0000, data.length), data, 'and so is the mapping');
    m.memory.writeU32(0x30_0000, 0xcafef00d);
    assert.equal(await m.bus.readU32(0x30_0000), 0xcafef00d, 'what this process writes, QEMU sees');
  });

  test(`${qemu} QEMU over qtest: with BARs assigned, the virtio common configuration answers over MMIO (§4.1.4.3)`, async (t) => {
    const m = await machine(t, qemu);
    if (!m) return;
    const blk = bdf(0, 4, 0);
    const bars = await m.pci.assignBars(blk);
    // Find the common configuration capability (§4.1.4: vendor-specific capability, cfg_type 1).
    let common: { bar: number; offset: number } | undefined;
    for (let cap = await m.pciConfigRead(blk, 0x34, 1); cap !== 0; cap = await m.pciConfigRead(blk, cap + 1, 1)) {
      if ((await m.pciConfigRead(blk, cap, 1)) === 0x09 && (await m.pciConfigRead(blk, cap + 3, 1)) === 1) {
        common = { bar: await m.pciConfigRead(blk, cap + 4, 1), offset: await m.pciConfigRead(blk, cap + 8, 4) };
        break;
      }
    }
    assert.ok(common, 'a modern device has a common configuration capability');
    const bar = bars.find((b) => b.index === common.bar);
    assert.ok(bar && bar.kind === 'memory', `the capability's BAR ${common.bar} was assigned`);
    const base = bar.addr + common.offset;
    await m.bus.writeU32(base + 0x00, 1); // device_feature_select: bits 32..63
    assert.equal((await m.bus.readU32(base + 0x04)) & 1, 1, 'VIRTIO_F_VERSION_1 is offered');
    assert.equal(await m.bus.readU16(base + 0x12), 1, 'num_queues: one request queue');
    assert.equal(await m.bus.readU8(base + 0x14), 0, 'device_status starts at 0 (reset)');
    // The transitional device also has the legacy I/O BAR 0 (§4.1.4.10): its status register (offset 18) reads 0 after reset.
    const legacyBars = await m.pci.assignBars(bdf(0, 5, 0));
    const io = legacyBars.find((b) => b.index === 0);
    assert.ok(io && io.kind === 'io');
    assert.equal(await m.bus.inU8(io.addr + 18), 0);
    const show = (list: typeof bars): string => list.map((b) => `${b.index} ${b.kind} 0x${b.addr.toString(16)}+0x${b.size.toString(16)}`).join(', ');
    t.diagnostic(`BARs of 00:04.0: ${show(bars)}; of 00:05.0: ${show(legacyBars)}`);
  });

  test(`${qemu} QEMU over qtest: intercepted IOAPIC lines arrive as interrupt events; refusals are typed`, async (t) => {
    const m = await machine(t, qemu);
    if (!m) return;
    await m.irqInterceptIn('ioapic');
    const events: string[] = [];
    m.bus.onInterrupt((e) => events.push(`${e.line}:${e.raised ? 'raise' : 'lower'}`));
    await m.bus.setIrqIn('ioapic', 'unnamed-gpio-in', 10, 1);
    assert.equal(m.bus.interruptLevel(10), true);
    await m.bus.setIrqIn('ioapic', 'unnamed-gpio-in', 10, 0);
    assert.deepEqual(events, ['10:raise', '10:lower']);
    await assert.rejects(m.bus.command('irq_intercept_in', '/machine/no-such-device'), QtestCommandError);
    if (m.accelerator === 'qtest') {
      assert.equal(await m.bus.clockStep(1_000_000n), 1_000_000n);
    } else {
      await assert.rejects(m.bus.clockStep(1_000_000n), /Unknown command 'clock_step'/);
    }
  });
}
