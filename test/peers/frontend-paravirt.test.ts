/**
 * The blk and rng drivers over the vhost-user front-end against paravirt's own back-end run as
 * a user runs it, `paravirt serve`, in its own process: both halves of this project meeting
 * only through the protocol, on split and on packed rings.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { BlkDriver } from '../../src/devices/blk/driver.ts';
import { RngDriver } from '../../src/devices/rng/driver.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId, Feature, hasFeature } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const log = pino({ level: 'warn' });

/** `paravirt serve <args>` listening on a fresh socket; stopped when the test ends. */
async function serve(t: TestContext, dir: string, ...args: string[]): Promise<string> {
  const socketPath = join(dir, 'vhost.sock');
  const backend = new PeerProcess(`paravirt serve ${args[0]}`, [process.execPath, PARAVIRT, 'serve', ...args, '--socket-path', socketPath], {
    textStdout: true,
  });
  t.after(() => backend.stop());
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  return socketPath;
}

function scratch(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'fe-paravirt-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`blk driver over the front-end against \`paravirt serve blk\` (${ring}, 2 queues)`, async (t) => {
    const dir = scratch(t);
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(2 << 20));
    const socketPath = await serve(t, dir, 'blk', '--image', image, '--queues', '2');
    const blk = await BlkDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log }), { log, packed });
    t.after(() => blk.close());
    assert.equal(hasFeature(blk.features, Feature.RING_PACKED), packed);
    assert.equal(blk.queues, 2);
    const data = Uint8Array.from({ length: 256 * 1024 }, (_, i) => (i * 13 + 5) & 0xff);
    // More requests than one queue holds, so both queues and the wait for ring room are used.
    await Promise.all(Array.from({ length: 64 }, (_, i) => blk.write(i * 8, data.subarray(i * 4096, (i + 1) * 4096))));
    await blk.flush();
    assert.deepEqual(readFileSync(image).subarray(0, data.length), Buffer.from(data), 'the image holds what was written');
    assert.deepEqual(await blk.read(0, data.length), data);
    await blk.writeZeroes(0, 8);
    assert.deepEqual(await blk.read(0, 4096), new Uint8Array(4096));
    await blk.close();
  });

  test(`rng driver over the front-end against \`paravirt serve rng\` (${ring})`, async (t) => {
    const socketPath = await serve(t, scratch(t), 'rng');
    const rng = await RngDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.RNG, log }), { log, packed });
    t.after(() => rng.close());
    const bytes = await rng.read(100_000);
    assert.equal(bytes.length, 100_000);
    assert.ok(new Set(bytes).size === 256, 'every byte value appears in 100 kB of random bytes');
    await rng.close();
  });
}

test('a front-end reconnects to `paravirt serve` after the previous one went away', async (t) => {
  const dir = scratch(t);
  const image = join(dir, 'disk.img');
  writeFileSync(image, new Uint8Array(1 << 20));
  const socketPath = await serve(t, dir, 'blk', '--image', image);
  for (const value of [1, 2, 3]) {
    const blk = await BlkDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log }), { log });
    if (value > 1) assert.deepEqual(await blk.read(0, 512), new Uint8Array(512).fill(value - 1), 'the previous session\'s write');
    await blk.write(0, new Uint8Array(512).fill(value));
    await blk.close();
  }
});
