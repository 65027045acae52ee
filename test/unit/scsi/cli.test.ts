/** `paravirt serve scsi` and `paravirt scsi` as a user runs them: bad options get one sentence naming them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PARAVIRT = fileURLToPath(new URL('../../../bin/paravirt.js', import.meta.url));

function paravirt(...args: string[]): { code: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [PARAVIRT, ...args], { cwd: tmpdir(), encoding: 'utf8' });
  return { code: r.status, stderr: r.stderr };
}

test('serve scsi refuses a missing --lun, a missing file, unknown LUN options and addresses out of range', () => {
  const dir = mkdtempSync(join(tmpdir(), 'scsi-cli-'));
  try {
    const image = join(dir, 'a.img');
    writeFileSync(image, new Uint8Array(4096));
    const sock = join(dir, 's.sock');
    for (const [args, message] of [
      [[], /--lun <file> is required/],
      [['--lun', join(dir, 'missing.img')], /missing\.img does not exist/],
      [['--lun', `${image},fast`], /--lun option "fast" is not ro, serial=, target= or lun=/],
      [['--lun', `${image},target=256`], /--lun target must be an integer from 0 to 255/],
      [['--lun', `${image},lun=16384`], /--lun lun must be an integer from 0 to 16383/],
      [['--lun', `${image},serial=has space`], /serial "has space" is not 1 to 64 printable ASCII/],
      [['--lun', `${image},lun=1`, '--lun', `${image},lun=1`], /LUN 0:1 is given twice/],
    ] as const) {
      const r = paravirt('serve', 'scsi', '--socket-path', sock, ...args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('paravirt scsi names what is missing or malformed', () => {
  assert.match(paravirt('scsi', 'info').stderr, /--socket-path <path> is required/);
  assert.match(paravirt('scsi', 'luns').stderr, /--control-socket <path> is required/);
  assert.match(paravirt('scsi', '--lun', '1:2:3', 'detach').stderr, /--lun must be TARGET:LUN or LUN/);
  assert.match(paravirt('scsi', '--control-socket', join(tmpdir(), 'no-such-paravirt.sock'), 'luns').stderr, /no-such-paravirt\.sock/);
});
