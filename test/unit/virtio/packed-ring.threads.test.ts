/**
 * Driver and device on two threads over shared memory, as with a real guest. Each side sleeps on
 * a counter (an eventfd in miniature) whenever it runs out of work and only the other side's
 * notification wakes it, so the rings' memory ordering and the enable-then-re-check races of
 * event suppression are exercised for real. A lost notification is detected, not waited out:
 * the driver about to sleep with requests outstanding, no interrupt since it enabled them, and
 * the device asleep on the doorbell's current value is a deadlock nothing can end.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker, isMainThread, workerData } from 'node:worker_threads';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import type { QueueConfig } from '../../../src/virtio/queue.ts';
import { PackedDeviceQueue, PackedDriverQueue } from '../../../src/virtio/packed-ring.ts';

const MEMORY = 1 << 20;
const RING = 0x1000;
const DATA = 0x10000;
const SLOT = 64;
const REQUESTS = 5000;

/** Int32 indices of the control block shared by the two threads. */
const Control = {
  /** Available buffer notifications (driver → device). */
  DOORBELL: 0,
  /** Used buffer notifications (device → driver). */
  INTERRUPT: 1,
  /** Bumped on every interrupt and whenever the device falls asleep: what the driver sleeps on. */
  DRIVER_WAKE: 2,
  /** 0 while the device is awake, else 1 + the doorbell value it sleeps on. */
  DEVICE_ASLEEP: 3,
  /** Set by the driver when it is done. */
  STOP: 4,
  /** Set by the device thread when it failed. */
  FAILED: 5,
  LENGTH: 6,
} as const;

interface Shared {
  readonly memory: SharedArrayBuffer;
  readonly control: SharedArrayBuffer;
  readonly config: QueueConfig;
}

function wakeDriver(ctl: Int32Array): void {
  Atomics.add(ctl, Control.DRIVER_WAKE, 1);
  Atomics.notify(ctl, Control.DRIVER_WAKE);
}

/** The device: echo each request's readable bytes into its writable buffer. */
function runDevice({ memory, control, config }: Shared): void {
  const mem = new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(memory) }]);
  const ctl = new Int32Array(control);
  const dev = new PackedDeviceQueue(mem, config, 'threads');
  dev.disableNotifications();
  for (;;) {
    for (let chain = dev.pop(); chain !== null; chain = dev.pop()) {
      const request = chain.readable[0];
      const n = Math.min(request.length, chain.writableLength);
      chain.writable[0].set(request.subarray(0, n));
      dev.push(chain, n);
    }
    if (dev.publish()) {
      Atomics.add(ctl, Control.INTERRUPT, 1);
      wakeDriver(ctl);
    }
    if (Atomics.load(ctl, Control.STOP) !== 0) return;
    // Read the doorbell before asking for notifications: a kick after this point changes it.
    const seen = Atomics.load(ctl, Control.DOORBELL);
    if (dev.enableNotifications()) {
      dev.disableNotifications();
      continue;
    }
    Atomics.store(ctl, Control.DEVICE_ASLEEP, seen + 1);
    wakeDriver(ctl);
    Atomics.wait(ctl, Control.DOORBELL, seen);
    Atomics.store(ctl, Control.DEVICE_ASLEEP, 0);
    dev.disableNotifications();
  }
}

if (!isMainThread) {
  const ctl = new Int32Array((workerData as Shared).control);
  try {
    runDevice(workerData as Shared);
  } catch (err) {
    Atomics.store(ctl, Control.FAILED, 1);
    wakeDriver(ctl);
    throw err;
  }
}

/**
 * A worker running this file as the device. The worker loads TypeScript through tsx's API, and a
 * failure to start is reported through the control block like any device failure.
 */
function startDevice(shared: Shared): Worker {
  const bootstrap = `
    const { workerData } = require('node:worker_threads');
    import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})
      .then((tsx) => { tsx.register(); return import(${JSON.stringify(import.meta.url)}); })
      .catch((err) => {
        const ctl = new Int32Array(workerData.control);
        Atomics.store(ctl, ${Control.FAILED}, 1);
        Atomics.add(ctl, ${Control.DRIVER_WAKE}, 1);
        Atomics.notify(ctl, ${Control.DRIVER_WAKE});
        throw err;
      });`;
  return new Worker(bootstrap, { eval: true, workerData: shared });
}

function requestBytes(r: number): Uint8Array {
  return Uint8Array.from({ length: 1 + (r % SLOT) }, (_, i) => (r * 7 + i) & 0xff);
}

async function exchange(size: number, eventIdx: boolean, inOrder: boolean): Promise<void> {
  const memory = new SharedArrayBuffer(MEMORY);
  const control = new SharedArrayBuffer(Control.LENGTH * 4);
  const config: QueueConfig = {
    size,
    desc: RING,
    driver: RING + 16 * size,
    device: RING + 16 * size + 4,
    eventIdx,
    indirect: false,
    inOrder,
  };
  const mem = new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(memory) }]);
  const ctl = new Int32Array(control);
  const drv = new PackedDriverQueue<number>(mem, config, 'threads');
  const worker = startDevice({ memory, control, config });
  const exited = new Promise<Error | undefined>((resolve) => {
    worker.once('error', resolve);
    worker.once('exit', () => resolve(undefined));
  });
  const deviceFailed = async (): Promise<never> => assert.fail(`the device thread failed: ${String(await exited)}`);

  // Each request in flight owns a slot: its request bytes, then room for the reply.
  const freeSlots = Array.from({ length: size }, (_, i) => i);
  const slotOf = new Map<number, number>();
  let submitted = 0;
  let completed = 0;
  while (completed < REQUESTS) {
    let progress = false;
    while (submitted < REQUESTS && freeSlots.length > 0) {
      const slot = freeSlots[freeSlots.length - 1];
      const bytes = requestBytes(submitted);
      const at = DATA + slot * 2 * SLOT;
      mem.write(at, bytes);
      if (!drv.add([{ addr: at, len: bytes.length }], [{ addr: at + SLOT, len: SLOT }], submitted)) break;
      freeSlots.pop();
      slotOf.set(submitted++, slot);
      progress = true;
    }
    if (drv.kick()) {
      Atomics.add(ctl, Control.DOORBELL, 1);
      Atomics.notify(ctl, Control.DOORBELL);
    }
    for (let used = drv.getUsed(); used !== null; used = drv.getUsed()) {
      const r = used.token;
      const slot = slotOf.get(r);
      assert.ok(slot !== undefined, `request ${r} came back twice or was never sent`);
      const expected = requestBytes(r);
      assert.equal(used.len, expected.length, `request ${r}`);
      assert.deepEqual(mem.slice(DATA + slot * 2 * SLOT + SLOT, used.len), expected, `request ${r}`);
      slotOf.delete(r);
      freeSlots.push(slot);
      completed++;
      progress = true;
    }
    if (progress) continue;

    const interrupts = Atomics.load(ctl, Control.INTERRUPT);
    if (drv.enableInterrupts()) {
      drv.disableInterrupts();
      continue;
    }
    // Sleep until an interrupt, checking for deadlock each time the device falls asleep.
    while (Atomics.load(ctl, Control.INTERRUPT) === interrupts) {
      const wake = Atomics.load(ctl, Control.DRIVER_WAKE);
      if (Atomics.load(ctl, Control.FAILED) !== 0) await deviceFailed();
      const asleepOn = Atomics.load(ctl, Control.DEVICE_ASLEEP) - 1;
      assert.ok(
        asleepOn !== Atomics.load(ctl, Control.DOORBELL) || Atomics.load(ctl, Control.INTERRUPT) !== interrupts,
        `lost notification: both sides asleep with ${submitted - completed} requests outstanding`,
      );
      Atomics.wait(ctl, Control.DRIVER_WAKE, wake);
    }
    drv.disableInterrupts();
  }
  Atomics.store(ctl, Control.STOP, 1);
  Atomics.add(ctl, Control.DOORBELL, 1);
  Atomics.notify(ctl, Control.DOORBELL);
  assert.equal(await exited, undefined);
  assert.equal(drv.freeDescriptors, size);
}

if (isMainThread) {
  for (const eventIdx of [false, true]) {
    for (const inOrder of [false, true]) {
      test(`two threads exchange ${REQUESTS} requests over a 7-entry ring (eventIdx=${eventIdx} inOrder=${inOrder})`, async () => {
        await exchange(7, eventIdx, inOrder);
      });
    }
  }
}
