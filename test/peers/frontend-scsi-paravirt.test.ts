/**
 * The scsi driver and initiator over the vhost-user front-end against `paravirt serve scsi` run
 * as a user runs it, in its own process: both halves meeting only through the protocol, on
 * split and packed rings, with LUNs on two targets and a read-only one.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { ScsiCheckCondition, ScsiInitiator } from '../../src/devices/scsi/initiator.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId, Feature, hasFeature } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const log = pino({ level: 'warn' });

async function serve(t: TestContext, dir: string, args: string[]): Promise<string> {
  const socketPath = join(dir, 'scsi.sock');
  const backend = new PeerProcess('paravirt serve scsi', [process.execPath, PARAVIRT, 'serve', 'scsi', ...args, '--socket-path', socketPath], { textStdout: true });
  t.after(() => backend.stop());
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  return socketPath;
}

for (const packed of [false, true]) {
  test(`scsi initiator over the front-end against \`paravirt serve scsi\` (${packed ? 'packed' : 'split'}, 2 queues)`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'fe-scsi-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const images = ['a.img', 'b.img', 'c.img'].map((n) => join(dir, n));
    for (const image of images) writeFileSync(image, new Uint8Array(0));
    truncateSync(images[0], 4 << 20);
    truncateSync(images[1], 1 << 20);
    truncateSync(images[2], 2 << 20);
    const socketPath = await serve(t, dir, ['--lun', images[0], '--lun', `${images[1]},ro`, '--lun', `${images[2]},target=1,lun=4`, '--queues', '2']);
    const init = await ScsiInitiator.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.SCSI, log }), { log, packed, maxTarget: 3 });
    t.after(() => init.close());
    assert.equal(hasFeature(init.driver.features, Feature.RING_PACKED), packed);
    assert.equal(init.driver.requestQueues, 2);
    assert.deepEqual(init.list().map((l) => `${l.address.target}:${l.address.lun}`), ['0:0', '0:1', '1:4']);
    const [a, ro, c] = init.list();
    assert.equal(a.capacity, 8192);
    assert.equal(ro.readOnly, true);
    const data = Uint8Array.from({ length: 256 * 1024 }, (_, i) => (i * 13 + 5) & 0xff);
    await Promise.all(Array.from({ length: 64 }, (_, i) => a.write(i * 8, data.subarray(i * 4096, (i + 1) * 4096))));
    await a.flush();
    assert.deepEqual(readFileSync(images[0]).subarray(0, data.length), Buffer.from(data), 'the image holds what was written');
    assert.deepEqual(await a.read(0, data.length), data);
    await c.write(100, data.subarray(0, 8192));
    assert.deepEqual(readFileSync(images[2]).subarray(100 * 512, 100 * 512 + 8192), Buffer.from(data.subarray(0, 8192)));
    await a.discard(0, 64);
    assert.deepEqual(await a.read(0, 4096), new Uint8Array(4096));
    await assert.rejects(ro.write(0, new Uint8Array(512)), (err: unknown) => err instanceof ScsiCheckCondition && err.key === 7);
  });
}
