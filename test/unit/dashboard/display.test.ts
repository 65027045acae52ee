/**
 * The display stream: the whole framebuffer once, then only dirty rectangles, a new size when the
 * device replaces its framebuffer, and a plain answer when there is no display.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { tmpdir } from 'node:os';
import { pino } from 'pino';
import { WebSocket } from 'ws';
import type { FramebufferView, Rect } from '../../../src/dashboard/display-socket.ts';
import { startDashboard } from '../../../src/dashboard/server.ts';
import type { HostedDevice } from '../../../src/run/backend.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';

/** A framebuffer whose pixel (x, y) starts as [x, y, seed, 255]. */
class TestFramebuffer implements FramebufferView {
  readonly pixels: Uint8Array;
  private readonly listeners = new Set<(r: Rect) => void>();
  constructor(readonly width: number, readonly height: number, seed: number) {
    this.pixels = new Uint8Array(width * height * 4);
    for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) this.pixels.set([x, y, seed, 255], (y * width + x) * 4);
  }
  onDirty(listener: (r: Rect) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  paint(r: Rect, value: number): void {
    for (let y = r.y; y < r.y + r.height; y++) for (let x = r.x; x < r.x + r.width; x++) this.pixels.set([value, value, value, 255], (y * this.width + x) * 4);
    for (const l of this.listeners) l(r);
  }
}

class TestDisplay extends EventEmitter {
  readonly counters = new DeviceCounters(2);
  constructor(public current: TestFramebuffer) {
    super();
  }
  framebuffer(): TestFramebuffer {
    return this.current;
  }
}

type Message = { kind: 'mode'; width: number; height: number } | { kind: 'rect'; rect: Rect; pixels: Buffer } | { kind: 'text'; text: string };

async function open(t: TestContext, devices: object[]) {
  const hosted = devices.map((device, i) => ({ id: `d${i}`, type: { name: 'gpu', title: 'a display' }, instance: { devices: [device], close: async () => {} } })) as unknown as HostedDevice[];
  const log = pino({ level: 'silent' });
  const dashboard = await startDashboard({ listen: { host: '127.0.0.1', port: 0 }, backend: { dir: tmpdir(), devices: hosted, console: undefined, setListening: async () => {} }, log });
  const origin = dashboard.url.replace(/\/$/, '');
  const ws = new WebSocket(`${origin.replace('http', 'ws')}/ws/display`, { origin });
  const messages: Message[] = [];
  ws.on('message', (data: Buffer, isBinary) => {
    if (!isBinary) return void messages.push({ kind: 'text', text: data.toString() });
    const word = (i: number) => data.readUInt32LE(i * 4);
    if (word(0) === 0) messages.push({ kind: 'mode', width: word(1), height: word(2) });
    else messages.push({ kind: 'rect', rect: { x: word(1), y: word(2), width: word(3), height: word(4) }, pixels: data.subarray(20) });
  });
  t.after(async () => {
    ws.close();
    await dashboard.close();
  });
  let taken = 0;
  return {
    async next(): Promise<Message> {
      while (messages.length === taken) await once(ws, 'message');
      return messages[taken++];
    },
  };
}

test('display: the whole framebuffer first, then the dirty rectangles with their pixels, then a new size', async (t) => {
  const display = new TestDisplay(new TestFramebuffer(8, 6, 1));
  const stream = await open(t, [display]);
  assert.deepEqual(await stream.next(), { kind: 'mode', width: 8, height: 6 });
  const full = await stream.next();
  assert.ok(full.kind === 'rect');
  assert.deepEqual(full.rect, { x: 0, y: 0, width: 8, height: 6 });
  assert.deepEqual([...full.pixels], [...display.current.pixels]);

  display.current.paint({ x: 2, y: 1, width: 3, height: 2 }, 200);
  const dirty = await stream.next();
  assert.ok(dirty.kind === 'rect');
  assert.deepEqual(dirty.rect, { x: 2, y: 1, width: 3, height: 2 });
  assert.deepEqual([...dirty.pixels], Array.from({ length: 6 }, () => [200, 200, 200, 255]).flat(), 'only the rectangle, row by row');

  const bigger = new TestFramebuffer(16, 4, 2);
  display.current = bigger;
  display.emit('framebuffer', 0, bigger);
  assert.deepEqual(await stream.next(), { kind: 'mode', width: 16, height: 4 });
  const again = await stream.next();
  assert.ok(again.kind === 'rect');
  assert.deepEqual(again.rect, { x: 0, y: 0, width: 16, height: 4 });
  assert.deepEqual([...again.pixels], [...bigger.pixels]);
});

test('display: without a display device the page is told so', async (t) => {
  const stream = await open(t, [{ counters: new DeviceCounters(1) }]);
  assert.deepEqual(await stream.next(), { kind: 'text', text: '{"t":"none"}' });
});
