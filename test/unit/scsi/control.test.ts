/** The control socket of a running SCSI controller: attach, list, resize, detach, and bad requests answered in one sentence. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ScsiControl } from '../../../src/devices/scsi/control.ts';
import { ScsiDevice } from '../../../src/devices/scsi/device.ts';
import { openLuns } from '../../../src/devices/scsi/luns.ts';

test('the control interface attaches, lists, resizes and detaches LUNs; bad requests get one sentence', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'scsi-control-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const a = join(dir, 'a.img');
  const b = join(dir, 'b.img');
  for (const f of [a, b]) writeFileSync(f, new Uint8Array(1 << 20));
  const luns = await openLuns([{ path: a, readOnly: false }]);
  const device = new ScsiDevice({ targets: luns.targets });
  const control = await ScsiControl.listen(device, luns.threads, join(dir, 'control.sock'));
  t.after(async () => {
    await control.close();
    await luns.close();
  });
  assert.deepEqual(await control.handle(JSON.stringify({ op: 'attach', lun: `${b},ro,serial=B`, target: 1, number: 3 })), { ok: true });
  const list = await control.handle('{"op":"list"}');
  assert.deepEqual(list, {
    ok: true,
    luns: [
      { target: 0, number: 0, sectors: 2048, readOnly: false, serial: 'lun-0-0' },
      { target: 1, number: 3, sectors: 2048, readOnly: true, serial: 'B' },
    ],
  });
  truncateSync(a, 2 << 20);
  assert.deepEqual(await control.handle('{"op":"resize","target":0,"number":0}'), { ok: true, sectors: 4096 });
  assert.deepEqual(await control.handle('{"op":"detach","target":1,"number":3}'), { ok: true });
  for (const [bad, error] of [
    ['not json', /JSON/],
    ['[]', /JSON object/],
    ['{"op":"explode"}', /attach, detach, resize or list/],
    ['{"op":"detach","target":1,"number":3}', /no SCSI LUN 1:3/],
    ['{"op":"detach","target":300,"number":0}', /"target" must be/],
    [JSON.stringify({ op: 'attach', lun: join(dir, 'missing.img'), target: 0, number: 1 }), /does not exist/],
    [JSON.stringify({ op: 'attach', lun: a, target: 0, number: 0 }), /already attached/],
  ] as const) {
    const reply = await control.handle(bad);
    assert.equal(reply.ok, false, bad);
    assert.match(reply.ok ? '' : reply.error, error);
  }
});
