/**
 * paravirt's QXL driver against QEMU's own qxl device (spice-server renders its commands) over
 * qtest: ROM and RAM discovery, memslots, an async primary surface, FILL and COPY (a bitmap in a
 * chain of chunks, through clip rectangles), the cursor, releases; what the driver drew is what
 * QMP screendump shows, pixel for pixel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { decodePng } from '../../src/devices/display/framebuffer.ts';
import { QxlDriver } from '../../src/devices/qxl/driver.ts';
import { bdf } from '../../src/transports/pci/config.ts';
import { q35IntxLine } from '../../src/transports/pci/q35.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { QmpClient } from '../lab/qmp.ts';
import { startQtest } from '../lab/qtest.ts';
import { requireLab } from '../lab/require.ts';

const WIDTH = 320;
const HEIGHT = 240;
const SLOT = 5;

/** x8r8g8b8 as bytes B, G, R, X. */
function bgrx(color: number): [number, number, number] {
  return [color & 0xff, (color >> 8) & 0xff, (color >> 16) & 0xff];
}

test("paravirt's QXL driver draws on QEMU's qxl: FILL and a chunked, clipped COPY are what screendump shows", async (t) => {
  if (!requireLab(t)) return;
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'pci-qxl-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const qmpPath = join(dir, 'qmp.sock');
  const m = await startQtest({ devices: ['-device', `qxl,addr=${SLOT}.0`, '-qmp', `unix:${qemu.toQemuPath(qmpPath)},server=on,wait=off`] }, t);
  const target = bdf(0, SLOT, 0);
  const bars = await m.pci.assignBars(target);
  await m.irqInterceptIn('ioapic');
  const qxl = await QxlDriver.open(m.bus, m.pci, target, bars, { intxLine: q35IntxLine });
  assert.ok(qxl.rom.modes.some((mode) => mode.width === 1024 && mode.height === 768), 'the ROM lists 1024x768');
  assert.ok(qxl.rom.ramHeaderOffset > 0 && qxl.rom.ramHeaderOffset < bars[0].size);

  await qxl.createPrimary(WIDTH, HEIGHT);
  const background = 0x00_20_40_80;
  const box = { top: 10, left: 20, bottom: 60, right: 100, color: 0x00_ff_c0_10 };
  await qxl.fill({ top: 0, left: 0, bottom: HEIGHT, right: WIDTH }, background);
  await qxl.fill(box, box.color);

  // A 64x48 picture drawn at (150, 100) in chunks of 5 rows, through two clip rectangles.
  const pw = 64;
  const ph = 48;
  const picture = new Uint8Array(pw * ph * 4);
  for (let y = 0; y < ph; y++) {
    for (let x = 0; x < pw; x++) {
      const o = (y * pw + x) * 4;
      picture[o] = (x * 4) & 0xff;
      picture[o + 1] = (y * 5) & 0xff;
      picture[o + 2] = (x ^ y) * 3 & 0xff;
    }
  }
  const at = { x: 150, y: 100 };
  const clips = [
    { top: 100, left: 150, bottom: 130, right: 214 },
    { top: 130, left: 150, bottom: 148, right: 180 },
  ];
  await qxl.copy(at.x, at.y, pw, ph, picture, { clips, chunkBytes: 5 * pw * 4 });

  const arrow = new Uint8Array(16 * 16 * 4).fill(0xff);
  await qxl.cursorSet(5, 5, 16, 16, arrow);
  await qxl.cursorMove(40, 50);
  await qxl.cursorHide();

  await qxl.updateArea({ top: 0, left: 0, bottom: HEIGHT, right: WIDTH });
  const shot = join(dir, 'screen.png');
  const sock = connect(qmpPath);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  t.after(() => sock.destroy());
  const qmp = new QmpClient(sock);
  await qmp.negotiate();
  await qmp.execute('screendump', { filename: qemu.toQemuPath(shot), format: 'png' });
  const png = decodePng(readFileSync(shot));
  assert.equal(png.width, WIDTH);
  assert.equal(png.height, HEIGHT);

  const inside = (r: { top: number; left: number; bottom: number; right: number }, x: number, y: number): boolean => x >= r.left && x < r.right && y >= r.top && y < r.bottom;
  let wrong = 0;
  let first = '';
  for (let y = 0; y < HEIGHT; y++) {
    for (let x = 0; x < WIDTH; x++) {
      let want = bgrx(background);
      if (inside(box, x, y)) want = bgrx(box.color);
      if (clips.some((c) => inside(c, x, y))) {
        const o = ((y - at.y) * pw + (x - at.x)) * 4;
        want = [picture[o], picture[o + 1], picture[o + 2]];
      }
      const o = (y * WIDTH + x) * 4;
      const got = [png.pixels[o + 2], png.pixels[o + 1], png.pixels[o]];
      if (got[0] !== want[0] || got[1] !== want[1] || got[2] !== want[2]) {
        if (wrong === 0) first = `(${x}, ${y}): BGR ${got.join(',')} instead of ${want.join(',')}`;
        wrong++;
      }
    }
  }
  assert.equal(wrong, 0, `screendump differs from what was drawn, first at ${first}`);

  // spice-server keeps the drawables still on screen, and QEMU batches releases: with the
  // primary surface gone, FLUSH_RELEASE hands every drawable back. spice-server takes cursor
  // commands only for a connected client, so without one they wait in the cursor ring.
  await qxl.flushReleases();
  const whileShown = qxl.outstanding;
  await qxl.destroyPrimary();
  await qxl.flushReleases();
  const queued = await qxl.queued();
  t.diagnostic(`not released while shown: ${whileShown}; after DESTROY_PRIMARY: ${qxl.outstanding}; still queued ${JSON.stringify(queued)}`);
  assert.deepEqual(queued, { commands: 0, cursor: 3 }, 'QEMU took every drawing command; the three cursor commands wait for a spice client');
  assert.equal(qxl.outstanding, 3, 'every drawing command was released; only the queued cursor commands are held');
  assert.equal(qxl.errors, 0, 'the device reported no driver error');
  await qxl.close();
  t.diagnostic(`QEMU ${m.qemu.version} (${m.accelerator}); INTx on GSI ${qxl.line}; RAM header at 0x${qxl.rom.ramHeaderOffset.toString(16)}, ${qxl.rom.modes.length} modes`);
});
