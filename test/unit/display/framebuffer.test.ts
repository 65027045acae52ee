import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Framebuffer, decodePng } from '../../../src/devices/display/framebuffer.ts';

test('framebuffer: starts opaque black and its PNG decodes to the same pixels', () => {
  const fb = new Framebuffer(5, 3);
  assert.deepEqual(fb.pixel(4, 2), [0, 0, 0, 255]);
  fb.fill({ x: 1, y: 1, width: 2, height: 1 }, 10, 20, 30);
  const png = decodePng(fb.toPng());
  assert.equal(png.width, 5);
  assert.equal(png.height, 3);
  assert.deepEqual(png.pixels, fb.pixels);
  assert.deepEqual(fb.pixel(2, 1), [10, 20, 30, 255]);
});

test('framebuffer: dirty rectangles are clipped, reported to listeners and taken once', () => {
  const fb = new Framebuffer(10, 10);
  const seen: unknown[] = [];
  const stop = fb.onDirty((r) => seen.push(r));
  fb.markDirty({ x: 8, y: -2, width: 5, height: 4 });
  fb.markDirty({ x: 20, y: 0, width: 1, height: 1 });
  assert.deepEqual(seen, [{ x: 8, y: 0, width: 2, height: 2 }]);
  assert.deepEqual(fb.takeDirty(), [{ x: 8, y: 0, width: 2, height: 2 }]);
  assert.deepEqual(fb.takeDirty(), []);
  stop();
  fb.markDirty({ x: 0, y: 0, width: 1, height: 1 });
  assert.equal(seen.length, 1);
});

test('framebuffer: an unread dirty list collapses to the whole screen instead of growing', () => {
  const fb = new Framebuffer(4, 4);
  for (let i = 0; i < 1000; i++) fb.markDirty({ x: i % 4, y: 0, width: 1, height: 1 });
  assert.ok(fb.takeDirty().length <= 257);
});

test('framebuffer: sizes and pixel positions outside the limits are refused with a sentence', () => {
  assert.throws(() => new Framebuffer(0, 10), /framebuffer size 0x10/);
  assert.throws(() => new Framebuffer(100000, 10), /framebuffer size/);
  assert.throws(() => new Framebuffer(4, 4).pixel(4, 0), /outside/);
});
