/**
 * The virtio-scsi controller through a real ring (mmio loopback), driven by paravirt's own
 * driver and initiator: addressing, responses, malformed requests, task management with commands
 * in flight, and hot-plug events.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import type { BlockBackend } from '../../../src/storage/block-backend.ts';
import { ScsiDevice } from '../../../src/devices/scsi/device.ts';
import { BLOCK_SIZE, ScsiDisk } from '../../../src/devices/scsi/disk.ts';
import { ScsiCheckCondition, ScsiInitiator, ScsiTransportError } from '../../../src/devices/scsi/initiator.ts';
import { ScsiTargets } from '../../../src/devices/scsi/target.ts';
import { EVENTS_MISSED, EVENT_SIZE, EventType, Response, ScsiFeature, TmfSubtype, decodeEvent } from '../../../src/devices/scsi/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceId } from '../../../src/virtio/constants.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { FRAMEWORK_FEATURES, featureMask } from '../../../src/virtio/features.ts';

function controller(luns: { target: number; lun: number; backend: BlockBackend; readOnly?: boolean }[]): ScsiDevice {
  const targets = new ScsiTargets();
  for (const l of luns) targets.add({ target: l.target, lun: l.lun }, new ScsiDisk({ backend: l.backend, readOnly: l.readOnly, serial: `s${l.target}-${l.lun}` }));
  return new ScsiDevice({ targets, queues: 2 });
}

/** A backend whose reads wait until released, so commands stay in flight. */
class HeldBackend extends MemoryBackend {
  private waiting: (() => void)[] = [];
  override async read(offset: number, segments: readonly Uint8Array[]): Promise<void> {
    await new Promise<void>((resolve) => this.waiting.push(resolve));
    return super.read(offset, segments);
  }
  get held(): number {
    return this.waiting.length;
  }
  release(): void {
    for (const r of this.waiting.splice(0)) r();
  }
}

for (const packed of [false, true]) {
  test(`the initiator scans targets and LUNs and moves data (${packed ? 'packed' : 'split'} ring)`, async () => {
    const a = new MemoryBackend(64 * BLOCK_SIZE);
    const b = new MemoryBackend(32 * BLOCK_SIZE);
    const c = new MemoryBackend(16 * BLOCK_SIZE);
    const device = controller([{ target: 0, lun: 0, backend: a }, { target: 0, lun: 300, backend: b, readOnly: true }, { target: 3, lun: 2, backend: c }]);
    const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
    const init = await ScsiInitiator.open(transport, { packed, maxTarget: 7 });
    assert.deepEqual(init.list().map((l) => `${l.address.target}:${l.address.lun}`), ['0:0', '0:300', '3:2']);
    const [l0, l300, l3] = init.list();
    assert.equal(l0.capacity, 64);
    assert.equal(l0.identity.vendor, 'PARAVIRT');
    assert.equal(l300.readOnly, true);
    const data = Uint8Array.from({ length: 8 * 512 }, (_, i) => (i * 13) & 0xff);
    await l3.write(4, data);
    assert.deepEqual(c.bytes.subarray(4 * 512, 12 * 512), data);
    assert.deepEqual(await l3.read(4, data.length), data);
    await l0.write(0, new Uint8Array(64 * 512).fill(7));
    await l0.discard(8, 8);
    assert.ok(a.bytes.subarray(8 * 512, 16 * 512).every((x) => x === 0));
    await l0.writeZeroes(20, 4, true);
    assert.ok(a.bytes.subarray(20 * 512, 24 * 512).every((x) => x === 0));
    assert.equal(a.bytes[24 * 512], 7);
    await l0.flush();
    await assert.rejects(l300.write(0, new Uint8Array(512)), (err: unknown) => err instanceof ScsiCheckCondition && err.key === 7 && err.sense?.asc === 0x27);
    await assert.rejects(l0.read(64, 512), RangeError);
    // A target that is not there.
    const bad = await init.driver.command({ target: 9, lun: 0 }, Uint8Array.of(0));
    assert.equal(bad.response, Response.BAD_TARGET);
    // An absent LUN on an existing target: CHECK CONDITION 25/00.
    const absent = await init.driver.command({ target: 3, lun: 1 }, Uint8Array.of(0));
    assert.equal(absent.status, 2);
    assert.deepEqual([absent.sense[2] & 0xf, absent.sense[12]], [5, 0x25]);
    // A too-short data-in buffer: OVERRUN, the whole buffer residual.
    const over = await init.driver.command({ target: 0, lun: 0 }, Uint8Array.of(0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0), { dataInLength: 512 });
    assert.equal(over.response, Response.OVERRUN);
    assert.equal(over.residual, 512);
    // A data-in buffer larger than the transfer: the residual is what was not filled.
    const longer = await init.driver.command({ target: 0, lun: 0 }, Uint8Array.of(0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0), { dataInLength: 2048 });
    assert.equal(longer.residual, 1536);
    assert.equal(longer.dataIn.length, 512);
    const counts = device.counters.snapshot();
    assert.ok(counts.queues[2].requests > 0 && counts.queues[3].requests > 0, 'both request queues used');
    await init.close();
  });
}

test('ABORT TASK and LOGICAL UNIT RESET answer after the commands they end, which complete ABORTED and RESET', async () => {
  const held = new HeldBackend(16 * BLOCK_SIZE);
  const device = controller([{ target: 0, lun: 0, backend: held }]);
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const init = await ScsiInitiator.open(transport, { maxTarget: 0 });
  const { driver } = init;
  const read = Uint8Array.of(0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0);
  const first = driver.commandTagged(77n, { target: 0, lun: 0 }, read, { dataInLength: 512 });
  await new Promise<void>((resolve) => setImmediate(resolve));
  assert.equal(held.held, 1, 'the read is in flight');
  let tmfDone = false;
  const abort = driver.taskManagement(TmfSubtype.ABORT_TASK, { target: 0, lun: 0 }, 77n).then((r) => {
    tmfDone = true;
    return r;
  });
  await new Promise<void>((resolve) => setImmediate(resolve));
  assert.equal(tmfDone, false, 'the TMF waits for the aborted command');
  held.release();
  assert.equal((await first).response, Response.ABORTED);
  assert.equal(await abort, Response.OK);

  const second = driver.command({ target: 0, lun: 0 }, read, { dataInLength: 512 });
  await new Promise<void>((resolve) => setImmediate(resolve));
  const reset = driver.taskManagement(TmfSubtype.LOGICAL_UNIT_RESET, { target: 0, lun: 0 });
  held.release();
  assert.equal((await second).response, Response.RESET);
  assert.equal(await reset, Response.OK);
  // After the reset the LUN reports it (29/00) to the next command.
  const ua = await driver.command({ target: 0, lun: 0 }, Uint8Array.of(0));
  assert.deepEqual([ua.status, ua.sense[2] & 0xf, ua.sense[12]], [2, 6, 0x29]);
  assert.equal(await driver.taskManagement(TmfSubtype.LOGICAL_UNIT_RESET, { target: 5, lun: 0 }), Response.BAD_TARGET);
  assert.equal(await driver.taskManagement(TmfSubtype.LOGICAL_UNIT_RESET, { target: 0, lun: 4 }), Response.INCORRECT_LUN);
  assert.equal(await driver.taskManagement(TmfSubtype.CLEAR_ACA, { target: 0, lun: 0 }), Response.FUNCTION_REJECTED);
  await init.close();
});

test('hot-plug, hot-unplug and a capacity change reach the initiator as events', async () => {
  const device = controller([{ target: 0, lun: 0, backend: new MemoryBackend(8 * BLOCK_SIZE) }]);
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const init = await ScsiInitiator.open(transport, { maxTarget: 1 });
  const added = new Promise<string>((resolve) => init.onLunAdded((l) => resolve(`${l.address.target}:${l.address.lun}`)));
  device.attach({ target: 0, lun: 9 }, new ScsiDisk({ backend: new MemoryBackend(4 * BLOCK_SIZE), serial: 'hot' }));
  assert.equal(await added, '0:9');
  assert.equal(init.luns.get('0:9')?.capacity, 4);
  const removed = new Promise<string>((resolve) => init.onLunRemoved((a) => resolve(`${a.target}:${a.lun}`)));
  await device.detach({ target: 0, lun: 9 });
  assert.equal(await removed, '0:9');
  assert.equal(init.luns.has('0:9'), false);
  const changed = new Promise<number>((resolve) => init.onLunChanged((l) => resolve(l.capacity)));
  device.resize({ target: 0, lun: 0 }, new MemoryBackend(24 * BLOCK_SIZE));
  assert.equal(await changed, 24, 'PARAM_CHANGE: the initiator re-read the capacity');
  await init.luns.get('0:0')!.read(16, 512);
  await init.close();
});

test('events a driver posts no buffers for wait in a bounded backlog; one dropped past it is counted and flagged EVENTS_MISSED on the next event', async () => {
  const device = controller([{ target: 0, lun: 0, backend: new MemoryBackend(8 * BLOCK_SIZE) }]);
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const core = await VirtioDriver.start(transport, { name: 'scsi', deviceId: DeviceId.SCSI, features: FRAMEWORK_FEATURES | featureMask([ScsiFeature.CHANGE]), queues: device.numQueues });
  const resize = (): void => void device.resize({ target: 0, lun: 0 }, new MemoryBackend(8 * BLOCK_SIZE));
  const dropped = (): number => device.counters.snapshot().device.eventsDropped;
  // No buffer posted: the backlog fills, then one more event is dropped.
  let backlog = 0;
  while (dropped() === 0) {
    resize();
    backlog++;
  }
  assert.equal(dropped(), 1);
  const waiting = backlog - 1;
  const buffers = Array.from({ length: waiting + 1 }, () => transport.dma.alloc(EVENT_SIZE, 8)!);
  const used = buffers.map((addr) => core.queue(1).submit([], [{ addr, len: EVENT_SIZE }]));
  await Promise.all(used.slice(0, waiting));
  const event = (addr: number) => decodeEvent(transport.memory.slice(addr, EVENT_SIZE));
  assert.ok(buffers.slice(0, waiting).every((addr) => event(addr).event === EventType.PARAM_CHANGE), 'the events that waited arrive unflagged');
  resize();
  assert.equal(await used[waiting], EVENT_SIZE);
  assert.equal(event(buffers[waiting]).event, (EventType.PARAM_CHANGE | EVENTS_MISSED) >>> 0, 'the driver learns it missed one and rescans');
  await core.close();
});

test('malformed requests are answered or returned empty, and the device keeps serving', async () => {
  const device = controller([{ target: 0, lun: 0, backend: new MemoryBackend(8 * BLOCK_SIZE) }]);
  const { transport, memory } = createLoopback(device, { memoryBytes: 1 << 20 });
  const init = await ScsiInitiator.open(transport, { maxTarget: 0 });
  const q = init.driver.core.queue(2);
  const buf = transport.dma.alloc(4096, 16) ?? assert.fail('no DMA memory');
  // No room for a response: returned with nothing written.
  assert.equal(await q.submit([{ addr: buf, len: 51 }], [{ addr: buf + 1024, len: 10 }]), 0);
  // A header shorter than lun + id + attributes + cdb: FAILURE.
  assert.equal(await q.submit([{ addr: buf, len: 8 }], [{ addr: buf + 1024, len: 108 }]), 108);
  assert.equal(memory.slice(buf + 1024 + 11, 1)[0], Response.FAILURE);
  // A LUN field that is not a §5.6.6.1 address: BAD_TARGET.
  memory.write(buf, new Uint8Array(51).fill(0xff));
  assert.equal(await q.submit([{ addr: buf, len: 51 }], [{ addr: buf + 1024, len: 108 }]), 108);
  assert.equal(memory.slice(buf + 1024 + 11, 1)[0], Response.BAD_TARGET);
  // Control queue: a request too short for its type is returned empty and counted.
  assert.equal(await init.driver.core.queue(0).submit([{ addr: buf, len: 2 }], [{ addr: buf + 1024, len: 1 }]), 0);
  assert.ok(device.counters.snapshot().queues[0].errors >= 1);
  transport.dma.free(buf);
  await assert.doesNotReject(init.luns.get('0:0')!.read(0, 512));
  await assert.rejects(init.driver.command({ target: 0, lun: 0 }, Uint8Array.of(0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0)).then((r) => {
    if (r.response !== Response.OK) throw new ScsiTransportError('READ', r.response);
  }), ScsiTransportError);
  await init.close();
});

test('every LUN gets ready for I/O once the controller is on a bus, before any command', async () => {
  const prepared: number[] = [];
  class Prepared extends MemoryBackend {
    constructor(readonly lun: number) {
      super(16 * BLOCK_SIZE);
    }
    prepare(): void {
      prepared.push(this.lun);
    }
  }
  const device = controller([{ target: 0, lun: 0, backend: new Prepared(0) }, { target: 1, lun: 5, backend: new Prepared(5) }]);
  assert.deepEqual(prepared, [], 'made, not yet seen by a driver');
  createLoopback(device, { memoryBytes: 1 << 20 });
  assert.deepEqual(prepared, [0, 5]);
});
