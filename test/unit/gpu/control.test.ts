/** The gpu's control socket and the `paravirt gpu` command that speaks to it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { decodePng } from '../../../src/devices/display/framebuffer.ts';
import { gpuControlRequest, listenGpuControl } from '../../../src/devices/gpu/control.ts';
import { GpuDevice } from '../../../src/devices/gpu/device.ts';
import { GpuDriver } from '../../../src/devices/gpu/driver.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';

const PARAVIRT = fileURLToPath(new URL('../../../bin/paravirt.js', import.meta.url));
const run = promisify(execFile);

test('control socket and `paravirt gpu`: screenshot, mode, status; bad requests get one sentence', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gpu-control-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'control.sock');
  const device = new GpuDevice({ scanouts: [{ width: 64, height: 32 }] });
  const gpu = await GpuDriver.open(createLoopback(device, { memoryBytes: 4 << 20 }).transport);
  t.after(() => gpu.close());
  const control = await listenGpuControl(device, path);
  t.after(() => control.close());
  assert.equal(statSync(path).mode & 0o777, 0o600, 'only the owner may see the screen');

  const s = await gpu.createSurface(64, 32);
  s.pixels.fill(0x40);
  await gpu.setScanout(0, s);
  await gpu.update(s);

  const file = join(dir, 'shot.png');
  const { stdout } = await run(process.execPath, [PARAVIRT, 'gpu', '--control', path, 'screenshot', file]);
  assert.deepEqual(JSON.parse(stdout), { file, width: 64, height: 32 });
  const png = decodePng(readFileSync(file));
  assert.deepEqual([...png.pixels.subarray(0, 4)], [0x40, 0x40, 0x40, 255]);

  const changed = new Promise((resolve) => gpu.onDisplayChange(resolve));
  const mode = await run(process.execPath, [PARAVIRT, 'gpu', '--control', path, 'mode', '320x240']);
  assert.deepEqual(JSON.parse(mode.stdout).scanouts[0].mode, { width: 320, height: 240, enabled: true });
  assert.deepEqual(await changed, [{ rect: { x: 0, y: 0, width: 320, height: 240 }, enabled: true }]);

  const status = await gpuControlRequest(path, { op: 'status' });
  assert.ok(status.ok);
  assert.deepEqual(status.status?.scanouts[0], { mode: { width: 320, height: 240, enabled: true }, width: 64, height: 32 });

  assert.deepEqual(await gpuControlRequest(path, { op: 'screenshot', scanout: 3 }), { ok: false, error: 'scanout 3 does not exist (the device has 1).' });
  const tiny = await gpuControlRequest(path, { op: 'mode', width: 2, height: 2 });
  assert.ok(!tiny.ok && /display mode 2x2 is not between/.test(tiny.error));
  await assert.rejects(run(process.execPath, [PARAVIRT, 'gpu', '--control', path, 'mode', 'big']), /mode must be WIDTHxHEIGHT/);
  await assert.rejects(run(process.execPath, [PARAVIRT, 'gpu', '--control', join(dir, 'none.sock'), 'status']), /cannot reach the gpu control socket/);
});
