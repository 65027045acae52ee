/** The vhost-user-gpu display stream: what a GpuDevice sends QEMU over its GPU_SET_SOCKET socket. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Socket } from 'node:net';
import { GpuDevice } from '../../../src/devices/gpu/device.ts';
import { GpuDriver } from '../../../src/devices/gpu/driver.ts';
import { GpuDisplayRequest } from '../../../src/devices/gpu/vhost-user-display.ts';
import { GpuFormat } from '../../../src/devices/gpu/wire.ts';
import { socketPair } from '../../../src/native/unix-socket.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';

interface Message {
  readonly request: number;
  readonly fields: number[];
  readonly data: Buffer;
}

/** Reads vhost-user-gpu messages (request, flags, size, payload) from `socket` as they come. */
function reader(socket: Socket, fieldCount: (request: number) => number): { next(): Promise<Message> } {
  let buffer = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    wake?.();
  });
  return {
    async next(): Promise<Message> {
      for (;;) {
        if (buffer.length >= 12 && buffer.length >= 12 + buffer.readUInt32LE(8)) {
          const request = buffer.readUInt32LE(0);
          const size = buffer.readUInt32LE(8);
          const n = fieldCount(request);
          const fields = Array.from({ length: n }, (_, i) => buffer.readUInt32LE(12 + i * 4));
          const data = buffer.subarray(12 + n * 4, 12 + size);
          buffer = buffer.subarray(12 + size);
          return { request, fields, data };
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
  };
}

const FIELDS: Readonly<Record<number, number>> = {
  [GpuDisplayRequest.SCANOUT]: 3,
  [GpuDisplayRequest.UPDATE]: 5,
  [GpuDisplayRequest.CURSOR_POS]: 3,
  [GpuDisplayRequest.CURSOR_POS_HIDE]: 3,
  [GpuDisplayRequest.CURSOR_UPDATE]: 5,
};

test('vhost-user-gpu display: SCANOUT before UPDATE, pixels as x8r8g8b8, cursor shape and moves', async (t) => {
  const device = new GpuDevice({ scanouts: [{ width: 32, height: 16 }] });
  const gpu = await GpuDriver.open(createLoopback(device, { memoryBytes: 4 << 20 }).transport);
  const [ours, theirs] = socketPair();
  device.displaySocket(ours.fd);
  const qemu = new Socket({ fd: theirs.fd, readable: true, writable: true });
  t.after(async () => {
    device.close();
    qemu.destroy();
    await gpu.close();
  });
  const messages = reader(qemu, (r) => FIELDS[r] ?? 0);

  // What the scanout shows when the socket arrives: its black mode-sized picture.
  assert.deepEqual((await messages.next()).fields, [0, 32, 16]);
  const first = await messages.next();
  assert.deepEqual([first.request, ...first.fields], [GpuDisplayRequest.UPDATE, 0, 0, 0, 32, 16]);

  const s = await gpu.createSurface(20, 10);
  for (let i = 0; i < 200; i++) s.pixels.set([0x10, 0x20, 0x30, 0], i * 4); // B, G, R, X
  await gpu.setScanout(0, s);
  const scanout = await messages.next();
  assert.deepEqual([scanout.request, ...scanout.fields], [GpuDisplayRequest.SCANOUT, 0, 20, 10], 'a new size is announced first');
  await messages.next(); // the scanout's content as SET_SCANOUT found it
  await gpu.update(s, { x: 2, y: 3, width: 4, height: 2 });
  const update = await messages.next();
  assert.deepEqual([update.request, ...update.fields], [GpuDisplayRequest.UPDATE, 0, 2, 3, 4, 2]);
  assert.equal(update.data.length, 4 * 2 * 4);
  assert.deepEqual([...update.data.subarray(0, 4)], [0x10, 0x20, 0x30, 0xff]);

  const c = await gpu.createSurface(64, 64, GpuFormat.B8G8R8A8_UNORM);
  c.pixels.set([1, 2, 3, 4], 0);
  await gpu.update(c);
  await gpu.updateCursor(c, 0, 5, 6, 7, 8);
  const shape = await messages.next();
  assert.deepEqual([shape.request, ...shape.fields], [GpuDisplayRequest.CURSOR_UPDATE, 0, 5, 6, 7, 8]);
  assert.equal(shape.data.length, 64 * 64 * 4);
  assert.deepEqual([...shape.data.subarray(0, 4)], [1, 2, 3, 4], 'a8r8g8b8 keeps the alpha');
  await gpu.moveCursor(0, 9, 10);
  const move = await messages.next();
  assert.deepEqual([move.request, ...move.fields], [GpuDisplayRequest.CURSOR_POS, 0, 9, 10]);
  await gpu.updateCursor(undefined, 0, 9, 10);
  assert.equal((await messages.next()).request, GpuDisplayRequest.CURSOR_POS_HIDE);
});
