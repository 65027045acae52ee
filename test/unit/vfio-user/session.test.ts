/**
 * The vfio-user session against a virtio-rng PCI function: what QEMU's vfio-user-pci asks at
 * realize time gets the answers vfio-pci needs, the configuration space is one the driver side
 * (pci/virtio-structures.ts) accepts, and every malformed request is refused with an errno while
 * the device stays untouched and the process lives.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import fc from 'fast-check';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { createMemfd } from '../../../src/native/memfd.ts';
import { closeFd } from '../../../src/native/fd.ts';
import { PciFunction } from '../../../src/transports/pci-device/function.ts';
import { EventFd } from '../../../src/native/eventfd.ts';
import { findVirtioStructures } from '../../../src/transports/pci/virtio-structures.ts';
import { VirtioPciFunction } from '../../../src/transports/pci-device/virtio-pci.ts';
import { Session } from '../../../src/transports/vfio-user/session.ts';
import { Command, Errno, HeaderFlag, IrqSetFlag, PciIrq, PciRegion } from '../../../src/transports/vfio-user/protocol.ts';
import { fields, message, quiet, reply, versionPayload, type Reply } from './helpers.ts';

function open(): { session: Session; fn: VirtioPciFunction; send: (command: number, payload: Uint8Array, fds?: number[], flags?: number) => Reply | undefined } {
  const fn = new VirtioPciFunction(new RngDevice(), quiet);
  const session = new Session(fn, quiet);
  let id = 0;
  const send = (command: number, payload: Uint8Array, fds: number[] = [], flags = 0): Reply | undefined => {
    const out = session.handle(message(id++, command, payload, fds, flags));
    return out === undefined ? undefined : reply(out.reply);
  };
  assert.equal(send(Command.VERSION, versionPayload())?.header.flags, HeaderFlag.REPLY);
  return { session, fn, send };
}

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

const regionRead = (region: number, offset: number | bigint, count: number): Uint8Array => fields([8, offset], [4, region], [4, count]);

test('VERSION: major 0 minor 0 and a NUL-terminated capabilities object no larger than the request', () => {
  const session = new Session(new VirtioPciFunction(new RngDevice(), quiet), quiet);
  const before = session.handle(message(1, Command.DEVICE_GET_INFO, fields([4, 16], [4, 0], [4, 0], [4, 0])));
  assert.equal(reply(before!.reply).header.error, Errno.EINVAL, 'nothing before VERSION');
  const request = message(2, Command.VERSION, versionPayload());
  const r = reply(session.handle(request)!.reply);
  assert.equal(r.header.id, 2);
  assert.equal(r.header.flags, HeaderFlag.REPLY);
  assert.equal(r.view.getUint16(0, true), 0);
  assert.equal(r.view.getUint16(2, true), 0);
  assert.equal(r.payload[r.payload.length - 1], 0);
  const caps = JSON.parse(Buffer.from(r.payload.subarray(4, -1)).toString()) as { capabilities: Record<string, number> };
  assert.equal(caps.capabilities.pgsizes, 4096);
  // QEMU receives a reply into the buffer of its request.
  assert.ok(r.header.size <= request.header.size, 'the reply fits in the request');
});

test('device, region and interrupt information is what vfio-pci needs', () => {
  const { send, fn } = open();
  const info = send(Command.DEVICE_GET_INFO, fields([4, 16], [4, 0], [4, 0], [4, 0]))!;
  assert.deepEqual([info.view.getUint32(4, true) & 3, info.view.getUint32(8, true), info.view.getUint32(12, true)], [3, 9, 5]);
  const regionInfo = (index: number): Reply => send(Command.DEVICE_GET_REGION_INFO, fields([4, 32], [4, 0], [4, index], [4, 0], [8, 0], [8, 0]))!;
  assert.equal(regionInfo(PciRegion.CONFIG).view.getBigUint64(16, true), 256n);
  assert.equal(regionInfo(0).view.getBigUint64(16, true), 0x4000n);
  assert.equal(regionInfo(1).view.getBigUint64(16, true), 0n, 'BAR 1 is not implemented');
  assert.equal(regionInfo(2).view.getBigUint64(16, true), BigInt(fn.pci.bars[2]!.size));
  assert.equal(regionInfo(PciRegion.ROM).view.getBigUint64(16, true), 0n);
  assert.equal(regionInfo(9).header.error, Errno.EINVAL);
  const irqCount = (index: number): number => send(Command.DEVICE_GET_IRQ_INFO, fields([4, 16], [4, 0], [4, index], [4, 0]))!.view.getUint32(12, true);
  assert.equal(irqCount(PciIrq.INTX), 1);
  assert.equal(irqCount(PciIrq.MSI), 0);
  assert.equal(irqCount(PciIrq.MSIX), 2, 'configuration and the one queue');
});

test('the configuration space is a modern virtio-pci function the driver side accepts', () => {
  const { send } = open();
  const space = send(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0, 256))!.payload.subarray(16);
  const v = new DataView(space.buffer, space.byteOffset, 256);
  assert.equal(v.getUint16(0, true), 0x1af4);
  assert.equal(v.getUint16(2, true), 0x1044);
  assert.equal(space[8], 1, 'revision 1: modern only');
  const structures = findVirtioStructures(space, [
    { index: 0, kind: 'memory', addr: 0xfe00_0000, size: 0x4000, wide: false },
    { index: 2, kind: 'memory', addr: 0xfe00_4000, size: 0x1000, wide: false },
  ]);
  assert.deepEqual([structures.common.offset, structures.isr.offset, structures.notify.offset, structures.notifyOffMultiplier], [0, 0x1000, 0x3000, 4]);
  assert.equal(structures.device, undefined, 'rng has no device configuration');
  assert.ok(structures.pciCfg !== undefined, 'the PCI configuration access capability is present (§4.1.4.9)');

  // Through that window: bar 0, offset of num_queues, length 2, then read pci_cfg_data.
  const cap = structures.pciCfg;
  const write = (offset: number, bytes: number[]): void => {
    send(Command.REGION_WRITE, new Uint8Array([...regionRead(PciRegion.CONFIG, offset, bytes.length), ...bytes]));
  };
  write(cap + 4, [0]);
  write(cap + 8, [0x12, 0, 0, 0]);
  write(cap + 12, [2, 0, 0, 0]);
  assert.equal(send(Command.REGION_READ, regionRead(PciRegion.CONFIG, cap + 16, 4))!.view.getUint32(16, true), 1, 'num_queues through pci_cfg_data');
  write(cap + 8, [0x13, 0, 0, 0]); // misaligned for its length: reaches nothing
  assert.equal(send(Command.REGION_READ, regionRead(PciRegion.CONFIG, cap + 16, 4))!.view.getUint32(16, true), 0);

  // BAR sizing: all ones written, the size mask read back; the type bits stay.
  send(Command.REGION_WRITE, new Uint8Array([...regionRead(PciRegion.CONFIG, 0x10, 4), 0xff, 0xff, 0xff, 0xff]));
  const bar0 = send(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0x10, 4))!.view.getUint32(16, true);
  assert.equal(bar0, 0xffff_c000);
  // Read-only identity does not change.
  send(Command.REGION_WRITE, new Uint8Array([...regionRead(PciRegion.CONFIG, 0, 4), 0, 0, 0, 0]));
  assert.equal(send(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0, 2))!.view.getUint16(16, true), 0x1af4);
});

test('common configuration through BAR 0 drives the DeviceState; reset clears it', () => {
  const { send, fn } = open();
  const write = (offset: number, bytes: number[]): void => {
    send(Command.REGION_WRITE, new Uint8Array([...regionRead(0, offset, bytes.length), ...bytes]));
  };
  const read = (offset: number, count: number): DataView => send(Command.REGION_READ, regionRead(0, offset, count))!.view;
  assert.equal(read(0x12, 2).getUint16(16, true), 1, 'num_queues');
  write(0x14, [1]);
  assert.equal(fn.state.status, 1);
  write(0x04, [0xff, 0xff, 0xff, 0xff]); // device_feature is read-only
  write(0x1a, [5, 0]); // queue_msix_vector past the table reads back NO_VECTOR
  assert.equal(read(0x1a, 2).getUint16(16, true), 0xffff);
  write(0x1a, [1, 0]);
  assert.equal(read(0x1a, 2).getUint16(16, true), 1);
  assert.equal(send(Command.DEVICE_RESET, new Uint8Array(0))!.header.error, 0);
  assert.equal(fn.state.status, 0);
  assert.equal(read(0x1a, 2).getUint16(16, true), 0xffff, 'vectors are unassigned after reset');
});

test('DMA maps: a memfd is mapped and unmapped whole; bad maps are refused and their descriptors closed', () => {
  const { send, fn } = open();
  const map = (iova: number, size: number, fds: number[], offset = 0): Reply => send(Command.DMA_MAP, fields([4, 32], [4, 3], [8, offset], [8, iova], [8, size]), fds)!;
  const unmap = (iova: number, size: number, flags = 0): Reply => send(Command.DMA_UNMAP, fields([4, 24], [4, flags], [8, iova], [8, size]))!;
  const memfd = createMemfd('ram', 0x10000);
  assert.equal(map(0, 0x10000, [memfd]).header.error, 0);
  assert.equal(isOpen(memfd), false, 'the mapping keeps the memory; the descriptor is closed');
  assert.ok(fn.state.memory !== undefined);
  const overlap = createMemfd('ram', 0x10000);
  assert.equal(map(0x8000, 0x10000, [overlap]).header.error, Errno.EEXIST);
  assert.equal(isOpen(overlap), false);
  const short = createMemfd('ram', 0x1000);
  assert.equal(map(0x100000, 0x10000, [short]).header.error, Errno.EINVAL, 'a file shorter than the map');
  assert.equal(map(0x200001, 0x1000, []).header.error, Errno.EINVAL, 'unaligned');
  assert.equal(map(0x300000, 0x1000, []).header.error, 0, 'a map without a descriptor is recorded');
  assert.equal(unmap(0, 0x8000).header.error, Errno.EINVAL, 'half a map');
  assert.equal(unmap(0, 0x10000, 1).header.error, Errno.ENOTSUP, 'dirty bitmaps');
  assert.equal(unmap(0, 0x10000).header.error, 0);
  assert.equal(fn.state.memory, undefined);
  assert.equal(unmap(0, 0, 2).header.error, 0, 'unmap all');
});

test('SET_IRQS: MSI-X eventfds assigned and taken away, INTx masking, malformed sets refused', () => {
  const { send } = open();
  const set = (flags: number, index: number, start: number, count: number, fds: number[] = [], extra: number[] = []): Reply =>
    send(Command.DEVICE_SET_IRQS, new Uint8Array([...fields([4, 20 + extra.length], [4, flags], [4, index], [4, start], [4, count]), ...extra]), fds)!;
  const a = EventFd.create();
  const b = EventFd.create();
  const trigger = IrqSetFlag.ACTION_TRIGGER;
  assert.equal(set(trigger | IrqSetFlag.DATA_EVENTFD, PciIrq.MSIX, 0, 2, [a.fd, b.fd]).header.error, 0);
  assert.equal(set(trigger | IrqSetFlag.DATA_NONE, PciIrq.MSIX, 1, 1).header.error, 0, 'loopback trigger');
  assert.equal(b.take(), 1n, 'vector 1 fired its eventfd');
  assert.equal(set(trigger | IrqSetFlag.DATA_EVENTFD, PciIrq.MSIX, 0, 2).header.error, 0, 'no descriptors: de-assign');
  // The server owns what it received (here the test's own descriptors) and closes them.
  assert.equal(isOpen(a.fd) || isOpen(b.fd), false, 'de-assigned eventfds are closed');
  assert.equal(set(trigger | IrqSetFlag.DATA_NONE, PciIrq.MSIX, 1, 1).header.error, 0, 'triggering an unassigned vector is harmless');
  const c = EventFd.create();
  const cfd = c.fd;
  assert.equal(set(trigger | IrqSetFlag.DATA_EVENTFD, PciIrq.MSIX, 1, 2, [cfd]).header.error, Errno.EINVAL, 'past the vectors');
  assert.equal(isOpen(cfd), false, 'refused descriptors are closed');
  const dfd = EventFd.create().fd;
  assert.equal(set(trigger | IrqSetFlag.DATA_EVENTFD, PciIrq.MSIX, 0, 2, [dfd]).header.error, Errno.EINVAL, 'one descriptor for two vectors');
  assert.equal(set(trigger | IrqSetFlag.DATA_NONE | IrqSetFlag.DATA_BOOL, PciIrq.MSIX, 0, 1).header.error, Errno.EINVAL, 'two data types');
  assert.equal(set(IrqSetFlag.ACTION_MASK | IrqSetFlag.DATA_NONE, PciIrq.MSIX, 0, 1).header.error, Errno.EINVAL, 'MSI-X is not maskable');
  assert.equal(set(IrqSetFlag.ACTION_MASK | IrqSetFlag.DATA_NONE, 7, 0, 1).header.error, Errno.EINVAL, 'no such index');
  assert.equal(set(trigger | IrqSetFlag.DATA_BOOL, PciIrq.MSIX, 0, 2, [], [1]).header.error, Errno.EINVAL, 'fewer booleans than interrupts');

  // INTx: a level line, automasked on delivery and fired again on unmask while still asserted.
  const intx = EventFd.create();
  assert.equal(set(trigger | IrqSetFlag.DATA_EVENTFD, PciIrq.INTX, 0, 1, [intx.fd]).header.error, 0);
  assert.equal(set(trigger | IrqSetFlag.DATA_NONE, PciIrq.INTX, 0, 1).header.error, 0);
  assert.equal(intx.take(), 1n);
  assert.equal(set(trigger | IrqSetFlag.DATA_NONE, PciIrq.INTX, 0, 1).header.error, 0);
  assert.equal(intx.take(), 0n, 'masked until unmasked');
  assert.equal(set(IrqSetFlag.ACTION_UNMASK | IrqSetFlag.DATA_NONE, PciIrq.INTX, 0, 1).header.error, 0);
  assert.equal(intx.take(), 1n, 'still asserted: fires again on unmask');
});

test('malformed region accesses and commands get an errno; posted writes get no reply', () => {
  const { send } = open();
  const err = (command: number, payload: Uint8Array): number => send(command, payload)!.header.error;
  assert.equal(err(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0xfc, 8)), Errno.EINVAL, 'past the end');
  assert.equal(err(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0xffff_ffff_ffff_fff0n, 0x20)), Errno.EINVAL, 'offset wraps');
  assert.equal(err(Command.REGION_READ, regionRead(1, 0, 4)), Errno.EINVAL, 'unimplemented BAR');
  assert.equal(err(Command.REGION_READ, regionRead(42, 0, 4)), Errno.EINVAL, 'no such region');
  assert.equal(err(Command.REGION_READ, regionRead(0, 0, 0)), Errno.EINVAL, 'empty');
  assert.equal(err(Command.REGION_WRITE, regionRead(0, 0, 4)), Errno.EINVAL, 'data missing');
  assert.equal(err(Command.REGION_READ, new Uint8Array(3)), Errno.EINVAL, 'short payload');
  assert.equal(err(Command.DMA_READ, new Uint8Array(16)), Errno.ENOTSUP, 'a server-to-client command');
  assert.equal(err(999, new Uint8Array(0)), Errno.ENOTSUP, 'unknown command');
  assert.equal(err(Command.DEVICE_GET_INFO, fields([4, 8], [4, 0], [4, 0], [4, 0])), Errno.EINVAL, 'argsz below the structure');
  assert.equal(send(Command.REGION_WRITE, new Uint8Array([...regionRead(0, 0x14, 1), 1]), [], HeaderFlag.NO_REPLY), undefined, 'posted write');
  assert.equal(send(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0xfc, 8), [], HeaderFlag.NO_REPLY), undefined, 'a bad posted request is dropped');
  const memfd = createMemfd('stray', 4096);
  assert.equal(send(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0, 4), [memfd])!.header.error, Errno.EINVAL, 'a descriptor where none belongs');
  assert.equal(isOpen(memfd), false);
});

test('fuzz: any message is answered with its id, or not at all when posted, and never throws', () => {
  const { session } = open();
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 0, max: 20 }),
      fc.integer({ min: 0, max: 0x3f }),
      fc.uint8Array({ maxLength: 80 }),
      (id, command, flags, payload) => {
        const out = session.handle(message(id, command, payload, [], flags));
        if ((flags & HeaderFlag.NO_REPLY) !== 0) return out === undefined;
        const r = reply(out!.reply);
        return r.header.id === id && r.header.command === command && (r.header.flags & HeaderFlag.TYPE_MASK) === HeaderFlag.REPLY && r.header.size === out!.reply.length;
      },
    ),
    { numRuns: 3000 },
  );
});

test('a BAR backed by shared memory is offered for mmap, its memfd attached to the region info reply', () => {
  const memfd = createMemfd('bar', 0x10000);
  const fn = new PciFunction({
    identity: { vendorId: 0x1b36, deviceId: 0x0100, subsystemVendorId: 0, subsystemId: 0, revision: 4, classCode: 0x03_80_00 },
    bars: [{ size: 0x10000, sharedFd: memfd, read: (_o, d) => d.fill(0), write: () => {} }, { size: 16, read: (_o, d) => d.fill(0), write: () => {} }],
    capabilities: [],
    interruptPin: 1,
  });
  const endpoint = { pci: fn, msixVectors: 0, attachInterrupts: () => {}, useMemory: () => {}, reset: () => fn.reset() };
  const session = new Session(endpoint, quiet);
  session.handle(message(0, Command.VERSION, versionPayload()));
  const info = (index: number): { flags: number; size: bigint; fds: readonly number[] } => {
    const out = session.handle(message(1, Command.DEVICE_GET_REGION_INFO, fields([4, 32], [4, 0], [4, index], [4, 0], [8, 0], [8, 0])))!;
    const r = reply(out.reply);
    return { flags: r.view.getUint32(4, true), size: r.view.getBigUint64(16, true), fds: out.fds ?? [] };
  };
  const shared = info(PciRegion.BAR0);
  assert.equal(shared.flags, 0x7, 'READ | WRITE | MMAP');
  assert.equal(shared.size, 0x10000n);
  assert.deepEqual(shared.fds, [memfd], 'the memfd goes with the reply');
  const plain = info(1);
  assert.equal(plain.flags, 0x3, 'a BAR without shared memory is not mappable');
  assert.deepEqual(plain.fds, []);
  assert.equal(isOpen(memfd), true, 'the server keeps its descriptor');
  closeFd(memfd);
});

test('a device gets ready for its driver when a client connects, not when the function is made', () => {
  let prepared = 0;
  const device = Object.assign(new RngDevice(), { prepare: () => void prepared++ });
  const fn = new VirtioPciFunction(device, quiet);
  assert.equal(prepared, 0);
  const session = new Session(fn, quiet);
  assert.equal(prepared, 1);
  session.close();
});
