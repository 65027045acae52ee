/**
 * paravirt's blk driver, unchanged, over the vhost-user front-end against qemu-storage-daemon's
 * vhost-user-blk export: a back-end nobody here wrote. Random mixes of writes, reads, flushes
 * and discards run concurrently over two queues and are checked against a model of the disk;
 * a second front-end connecting afterwards finds the disk as the first one left it.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { pino } from 'pino';
import { BlkDriver } from '../../src/devices/blk/driver.ts';
import { BlkFeature } from '../../src/devices/blk/wire.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId, Feature, hasFeature } from '../../src/virtio/constants.ts';
import { missingProgram } from '../lab/peers-env.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { startStorageDaemon } from '../lab/qsd.ts';
import { requireLab } from '../lab/require.ts';

const log = pino({ level: 'warn' });
const SECTOR = 512;
/** The disk is cut into slots; the operations of one concurrent batch touch distinct slots. */
const SLOTS = 16;
const SLOT_SECTORS = 64;
const DISK_BYTES = SLOTS * SLOT_SECTORS * SECTOR;

type Op =
  | { readonly kind: 'write'; readonly slot: number; readonly at: number; readonly sectors: number; readonly seed: number }
  | { readonly kind: 'read'; readonly slot: number; readonly at: number; readonly sectors: number }
  | { readonly kind: 'discard'; readonly slot: number; readonly at: number; readonly sectors: number }
  | { readonly kind: 'flush'; readonly slot: number };

const range = { at: fc.integer({ min: 0, max: SLOT_SECTORS - 1 }), sectors: fc.integer({ min: 1, max: SLOT_SECTORS }) };
const slot = fc.integer({ min: 0, max: SLOTS - 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('write' as const), slot, ...range, seed: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('read' as const), slot, ...range }),
  fc.record({ kind: fc.constant('discard' as const), slot, ...range }),
  fc.record({ kind: fc.constant('flush' as const), slot }),
);
/** Batches of operations on distinct slots, each batch in flight at once. */
const batchesArb = fc.array(fc.uniqueArray(opArb, { selector: (op) => op.slot, minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 12 });

/** The disk as the driver should see it; `known` is false for discarded sectors, whose contents are unspecified (§5.2.6.2). */
class Model {
  readonly bytes = new Uint8Array(DISK_BYTES);
  readonly known = new Array<boolean>(DISK_BYTES / SECTOR).fill(true);
}

/** Sector span of `op` inside its slot, clipped to the slot. */
function span(op: { slot: number; at: number; sectors: number }): { sector: number; count: number } {
  return { sector: op.slot * SLOT_SECTORS + op.at, count: Math.min(op.sectors, SLOT_SECTORS - op.at) };
}

const pattern = (seed: number, bytes: number): Uint8Array => Uint8Array.from({ length: bytes }, (_, i) => (seed * 31 + i * 7) & 0xff);

async function run(blk: BlkDriver, model: Model, op: Op): Promise<void> {
  if (op.kind === 'flush') {
    await blk.flush();
    return;
  }
  const { sector, count } = span(op);
  const at = sector * SECTOR;
  const bytes = count * SECTOR;
  switch (op.kind) {
    case 'write': {
      const data = pattern(op.seed, bytes);
      await blk.write(sector, data);
      model.bytes.set(data, at);
      model.known.fill(true, sector, sector + count);
      return;
    }
    case 'read': {
      const got = await blk.read(sector, bytes);
      for (let s = 0; s < count; s++) {
        if (!model.known[sector + s]) continue;
        const off = s * SECTOR;
        assert.deepEqual(got.subarray(off, off + SECTOR), model.bytes.subarray(at + off, at + off + SECTOR), `sector ${sector + s}`);
      }
      return;
    }
    case 'discard':
      await blk.discard(sector, count);
      model.known.fill(false, sector, sector + count);
      return;
  }
}

/** A directory the daemon can see, removed when the test ends. */
function scratch(t: TestContext, which: 'lab' | 'system'): string {
  const share = which === 'lab' ? qemuCommand().shareDir : tmpdir();
  const dir = mkdtempSync(join(existsSync(share) ? share : tmpdir(), 'fe-qsd-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const qemu of ['system', 'lab'] as const) {
  test(`blk driver over the front-end against ${qemu} qemu-storage-daemon: a random mix on 2 queues matches a model, also after reconnecting`, async (t) => {
    if (!(qemu === 'lab' ? requireLab(t) : requireLab(t, missingProgram('qemu-storage-daemon', 'qemu-system-common')))) return;
    const dir = scratch(t, qemu);
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(DISK_BYTES));
    const daemon = await startStorageDaemon({ image, socketPath: join(dir, 'vub.sock'), numQueues: 2, writable: true, qemu }, t);
    const frontend = await VhostUserFrontend.connect(daemon.socketPath, { deviceId: DeviceId.BLOCK, log });
    const blk = await BlkDriver.open(frontend, { log });
    t.after(() => blk.close());
    t.diagnostic(`qemu-storage-daemon ${daemon.version}: negotiated features 0x${blk.features.toString(16)}, protocol 0x${frontend.protocolFeatures.toString(16)}`);
    assert.equal(blk.capacity, DISK_BYTES / SECTOR);
    assert.equal(blk.queues, 2, 'both queues of the export serve requests');
    assert.ok(hasFeature(blk.features, BlkFeature.FLUSH) && hasFeature(blk.features, BlkFeature.DISCARD));
    assert.ok(hasFeature(blk.features, Feature.EVENT_IDX), 'the event index the daemon offers is used');

    const model = new Model();
    await fc.assert(
      fc.asyncProperty(batchesArb, async (batches) => {
        for (const batch of batches) await Promise.all(batch.map((op) => run(blk, model, op)));
        await blk.flush();
        // What the daemon wrote to its file is what the model says, sector by sector.
        const file = readFileSync(image);
        for (let s = 0; s < model.known.length; s++) {
          if (!model.known[s]) continue;
          assert.deepEqual(file.subarray(s * SECTOR, (s + 1) * SECTOR), Buffer.from(model.bytes.subarray(s * SECTOR, (s + 1) * SECTOR)), `image sector ${s}`);
        }
      }),
      // The disk and the model carry over from run to run, so a failure is reported as found, unshrunk.
      { numRuns: 15, endOnFailure: true },
    );
    await blk.close();

    // A new front-end on the same socket sees the disk as the first one left it.
    const again = await BlkDriver.open(await VhostUserFrontend.connect(daemon.socketPath, { deviceId: DeviceId.BLOCK, log }), { log });
    t.after(() => again.close());
    const disk = await again.read(0, DISK_BYTES);
    for (let s = 0; s < model.known.length; s++) {
      if (model.known[s]) assert.deepEqual(disk.subarray(s * SECTOR, (s + 1) * SECTOR), model.bytes.subarray(s * SECTOR, (s + 1) * SECTOR), `sector ${s} after reconnecting`);
    }
    await again.close();
  });
}
