/** The balloon's control socket and the `paravirt balloon` command that speaks to it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { controlRequest, listenControl, parseSize } from '../../../src/devices/balloon/control.ts';
import { BalloonDevice } from '../../../src/devices/balloon/device.ts';
import { BalloonDriver } from '../../../src/devices/balloon/driver.ts';
import { StatTag } from '../../../src/devices/balloon/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';

const PARAVIRT = fileURLToPath(new URL('../../../bin/paravirt.js', import.meta.url));
const MiB = 1024 * 1024;

test('parseSize: sizes with units, and one sentence for anything else', () => {
  assert.equal(parseSize('256M'), 256 * MiB);
  assert.equal(parseSize('1G'), 1024 * MiB);
  assert.equal(parseSize('4096'), 4096);
  assert.equal(parseSize('0'), 0);
  assert.equal(parseSize('2MiB'), 2 * MiB);
  for (const bad of ['-1M', '1.5G', 'lots', '']) assert.throws(() => parseSize(bad), /is not a non-negative size such as 256M/);
});

test('control socket and `paravirt balloon`: set, status, stats; a target above guest RAM is refused with one sentence', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'balloon-control-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'control.sock');
  const device = new BalloonDevice();
  const loop = createLoopback(device, { memoryBytes: 16 * MiB });
  const driver = await BalloonDriver.open(loop.transport, { stats: () => [{ tag: StatTag.MEMFREE, value: 3 * MiB }] });
  t.after(() => driver.close());
  const control = await listenControl(device, path);
  t.after(() => control.close());
  assert.equal(statSync(path).mode & 0o777, 0o600, 'only the owner may control the balloon');

  const set = await controlRequest(path, { op: 'set', bytes: 2 * MiB });
  assert.deepEqual(set, { ok: true, status: { targetBytes: 2 * MiB, actualBytes: 0, inflatedBytes: 0, guestRamBytes: 16 * MiB } });
  while (device.status().actualBytes !== 2 * MiB) await once(device, 'actual');

  const refused = await controlRequest(path, { op: 'set', bytes: 32 * MiB });
  assert.deepEqual(refused, { ok: false, error: `balloon target of ${32 * MiB} bytes exceeds the guest's ${16 * MiB} bytes of RAM.` });

  const cli = promisify(execFile);
  const status = await cli(process.execPath, [PARAVIRT, 'balloon', '--control', path, 'status']);
  assert.equal(JSON.parse(status.stdout).actualBytes, 2 * MiB);
  const stats = await cli(process.execPath, [PARAVIRT, 'balloon', '--control', path, 'stats']);
  assert.deepEqual(JSON.parse(stats.stdout).values['free-memory'], { value: 3 * MiB, unit: 'bytes' });
  const tooBig = await cli(process.execPath, [PARAVIRT, 'balloon', '--control', path, 'set', '1G']).then(
    () => assert.fail('a target above guest RAM must fail'),
    (err: { code: number; stderr: string }) => err,
  );
  assert.equal(tooBig.code, 1);
  assert.equal(tooBig.stderr, `paravirt: balloon target of ${1024 * MiB} bytes exceeds the guest's ${16 * MiB} bytes of RAM.\n`);
  const negative = await cli(process.execPath, [PARAVIRT, 'balloon', '--control', path, 'set', '-5M']).catch((err: { stderr: string }) => err);
  assert.match(negative.stderr, /^paravirt: balloon size "-5M" is not a non-negative size/);
});
