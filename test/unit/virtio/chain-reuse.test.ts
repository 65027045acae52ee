/**
 * The reuse contract of both ring layouts (DeviceQueue.pop, DriverQueue.getUsed): a chain is the
 * queue's record of its id, refilled when that id comes again after the chain went back, and
 * never touched while a device holds it; getUsed() refills one result object.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChainReader } from '../../../src/virtio/chain-io.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import type { DescriptorChain, QueueConfig, ResubmittingQueue, Segment, DriverQueue } from '../../../src/virtio/queue.ts';
import { PackedDeviceQueue, PackedDriverQueue, packedRingLayout } from '../../../src/virtio/packed-ring.ts';
import { SplitDeviceQueue, SplitDriverQueue, placeRingAreas, splitRingLayout } from '../../../src/virtio/split-ring.ts';

const DATA = 0x10000;

interface Pair {
  readonly memory: GuestMemory;
  readonly dev: ResubmittingQueue;
  readonly drv: DriverQueue<number>;
}

const LAYOUTS = ['split', 'packed'] as const;

function pair(layout: (typeof LAYOUTS)[number], size: number, inOrder = false): Pair {
  const memory = GuestMemory.allocate(0x40000);
  const areas = placeRingAreas(layout === 'split' ? splitRingLayout(size) : packedRingLayout(size), 0x1000);
  const config: QueueConfig = { ...areas, size, eventIdx: false, indirect: false, inOrder };
  return layout === 'split'
    ? { memory, drv: new SplitDriverQueue<number>(memory, config, 'q'), dev: new SplitDeviceQueue(memory, config, 'q') }
    : { memory, drv: new PackedDriverQueue<number>(memory, config, 'q'), dev: new PackedDeviceQueue(memory, config, 'q') };
}

/** Everything a device can see of a chain, copied (views by identity and by content). */
function snapshot(chain: DescriptorChain) {
  return {
    id: chain.id,
    ringDescriptors: chain.ringDescriptors,
    readableLength: chain.readableLength,
    writableLength: chain.writableLength,
    readable: [...chain.readable],
    writable: [...chain.writable],
    bytes: [...chain.readable, ...chain.writable].map((v) => [...v]),
  };
}

/**
 * `chain` describes the same buffers as `before`; with `sameViews`, through the very same views
 * (a chain held in flight). A chain given back and popped again is refilled, so its views may be new.
 */
function assertUnchanged(chain: DescriptorChain, before: ReturnType<typeof snapshot>, when: string, sameViews = true): void {
  const now = snapshot(chain);
  assert.deepEqual(
    { ...now, readable: undefined, writable: undefined },
    { ...before, readable: undefined, writable: undefined },
    when,
  );
  if (!sameViews) return;
  now.readable.forEach((v, i) => assert.equal(v, before.readable[i], `${when}: readable view ${i}`));
  now.writable.forEach((v, i) => assert.equal(v, before.writable[i], `${when}: writable view ${i}`));
}

/** Buffer n: a readable segment holding n, then one to three writable ones, all at addresses of their own. */
function buffer(memory: GuestMemory, n: number): [Segment[], Segment[]] {
  const at = DATA + (n % 180) * 0x400;
  memory.write(at, Uint8Array.of(n & 0xff, (n >> 8) & 0xff));
  const writable = Array.from({ length: 1 + (n % 3) }, (_, k) => ({ addr: at + 0x40 + k * 0x40, len: 8 + k + (n % 5) }));
  return [[{ addr: at, len: 2 }], writable];
}

for (const layout of LAYOUTS) {
  test(`${layout}: a chain popped after an earlier one with its id went back is the same object, refilled with the new buffer`, () => {
    const { memory, dev, drv } = pair(layout, 4);
    const seen = new Map<number, DescriptorChain>();
    let reused = 0;
    for (let n = 0; n < 40; n++) {
      const [out, inSegs] = buffer(memory, n);
      assert.equal(drv.add(out, inSegs, n), true);
      drv.kick();
      const chain = dev.pop()!;
      const earlier = seen.get(chain.id);
      if (earlier !== undefined) {
        assert.equal(chain, earlier, 'the record of the id');
        reused++;
      }
      seen.set(chain.id, chain);
      // The refilled record describes this buffer, not the one before.
      assert.deepEqual([...chain.readable[0]], [n & 0xff, (n >> 8) & 0xff]);
      assert.deepEqual(chain.writable.map((v) => v.length), inSegs.map((s) => s.len));
      assert.equal(chain.writableLength, inSegs.reduce((a, s) => a + s.len, 0));
      dev.push(chain, 0);
      dev.publish();
      assert.equal(drv.getUsed()?.token, n);
    }
    assert.ok(reused > 30, `records were reused (${reused} times)`);
  });

  test(`${layout}: a chain held in flight is never overwritten while others come and go, are given back and come again`, () => {
    const { memory, dev, drv } = pair(layout, 32);
    let n = 0;
    const add = () => {
      const [out, inSegs] = buffer(memory, n);
      assert.equal(drv.add(out, inSegs, n++), true);
    };
    add();
    drv.kick();
    const held = dev.pop()!;
    const before = snapshot(held);
    for (let round = 0; round < 50; round++) {
      for (let k = 0; k < 3; k++) add();
      drv.kick();
      const a = dev.pop()!;
      const b = dev.pop()!;
      const c = dev.pop()!;
      assert.notEqual(a, held);
      // Give the newest back unused, and take it again: the same chain, the same contents.
      const again = snapshot(c);
      dev.unpop(c);
      const c2 = dev.pop()!;
      assert.equal(c2, c);
      assertUnchanged(c2, again, `round ${round}: a chain given back and popped again`, false);
      dev.push(b, 1);
      dev.push(a, 0);
      dev.push(c2, 0);
      dev.publish();
      for (let used = drv.getUsed(); used !== null; used = drv.getUsed());
      assertUnchanged(held, before, `round ${round}`);
    }
    // A resubmission naming the held chain's id is refused before its record is touched.
    const saved = { id: held.id, descriptors: [{ addr: DATA + 0x3000, len: 4, id: held.id, flags: 0 }] };
    assert.throws(() => dev.resubmit(saved));
    assertUnchanged(held, before, 'after a refused resubmission');
    dev.push(held, 0);
    dev.publish();
    assert.equal(drv.getUsed()?.token, 0);
  });

  test(`${layout} IN_ORDER: chains popped while an older one is held leave it as it was, and go back in order`, () => {
    const { memory, dev, drv } = pair(layout, 32, true);
    let n = 0;
    let collected = 0;
    for (let round = 0; round < 30; round++) {
      for (let k = 0; k < 4; k++) {
        const [out, inSegs] = buffer(memory, n);
        assert.equal(drv.add(out, inSegs, n++), true);
      }
      drv.kick();
      const chains = [dev.pop()!, dev.pop()!, dev.pop()!];
      const before = chains.map(snapshot);
      // The fourth is taken and given back twice over before anything is pushed.
      const last = dev.pop()!;
      dev.unpop(last);
      assert.equal(dev.pop(), last);
      chains.forEach((c, i) => assertUnchanged(c, before[i], `round ${round}, chain ${i}`));
      for (const c of [...chains, last]) dev.push(c, c.writableLength);
      dev.publish();
      for (let used = drv.getUsed(); used !== null; used = drv.getUsed()) assert.equal(used.token, collected++);
    }
    assert.equal(collected, n);
  });

  test(`${layout}: getUsed() refills one result object`, () => {
    const { memory, dev, drv } = pair(layout, 8);
    for (let n = 0; n < 2; n++) {
      const [out, inSegs] = buffer(memory, n);
      assert.equal(drv.add(out, inSegs, n), true);
    }
    drv.kick();
    const a = dev.pop()!;
    const b = dev.pop()!;
    dev.push(a, 2);
    dev.push(b, 3);
    dev.publish();
    const first = drv.getUsed()!;
    assert.deepEqual({ ...first }, { token: 0, len: 2 });
    const second = drv.getUsed()!;
    assert.equal(second, first, 'the same object');
    assert.deepEqual({ ...second }, { token: 1, len: 3 });
    assert.equal(drv.getUsed(), null);
  });
}

for (const layout of LAYOUTS) {
  test(`${layout}: a view lent of a buffer the driver uses again, in any ring slot, is the same object with the same bytes`, () => {
    const { memory, dev, drv } = pair(layout, 8);
    const views = new Map<number, Uint8Array>();
    // Three buffers taking turns over eight slots, as a driver's pool of buffers does.
    for (let n = 0; n < 30; n++) {
      const addr = DATA + (n % 3) * 0x100;
      memory.write(addr, Uint8Array.of(n, n + 1, n + 2, n + 3));
      assert.equal(drv.add([{ addr, len: 4 }], [], n), true);
      drv.kick();
      const chain = dev.pop()!;
      const reader = new ChainReader(chain);
      const head = reader.view(1)!;
      const rest = reader.view(3)!;
      assert.deepEqual([...head, ...rest], [n, n + 1, n + 2, n + 3], 'the bytes the driver wrote last');
      assert.equal(memory.addressOf(rest), addr + 1);
      const earlier = views.get(addr);
      if (earlier !== undefined) assert.equal(rest, earlier, `buffer ${n % 3}: the view lent before`);
      views.set(addr, rest);
      assert.notEqual(head, rest);
      dev.push(chain, 0);
      dev.publish();
      assert.equal(drv.getUsed()?.token, n);
    }
  });
}
