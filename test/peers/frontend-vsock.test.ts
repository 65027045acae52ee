/**
 * paravirt's vsock driver over the vhost-user front-end against `paravirt serve vsock`, a
 * separate process, with its host side on Unix sockets (hybrid vsock): a guest connection to
 * port P reaches the program listening on PATH_P, and a host program's `CONNECT P` reaches the
 * driver's listener on port P.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { VsockDriver } from '../../src/devices/vsock/driver.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { readAll, writeAll } from '../lab/streams.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const log = pino({ level: 'warn' });
const MiB = 1 << 20;

function sha(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

async function serveVsock(t: TestContext): Promise<{ dir: string; uds: string; driver: VsockDriver }> {
  const dir = mkdtempSync(join(tmpdir(), 'fe-vsock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'vhost.sock');
  const uds = join(dir, 'v.sock');
  const backend = new PeerProcess('paravirt serve vsock', [process.execPath, PARAVIRT, 'serve', 'vsock', '--socket-path', socketPath, '--guest-cid', '9', '--uds-path', uds], { textStdout: true });
  t.after(() => backend.stop());
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  const driver = await VsockDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.VSOCK, log }), { log });
  return { dir, uds, driver };
}

/** A host program listening on `path`, and its first connection to come. */
async function hostListener(t: TestContext, path: string): Promise<{ connection: Promise<Socket> }> {
  const server = createServer({ allowHalfOpen: true });
  t.after(() => server.close());
  server.listen(path);
  await once(server, 'listening');
  return { connection: once(server, 'connection').then(([s]) => s as Socket) };
}

test('vsock driver against `paravirt serve vsock`: 16 MiB each way at once through one connection with matching sha256, the host reading slowly', async (t) => {
  const { uds, driver } = await serveVsock(t);
  assert.equal(driver.guestCid, 9);
  const accepted = await hostListener(t, `${uds}_5000`);
  const guest = await driver.connect(5000);
  const host = await accepted.connection;
  const up = randomBytes(16 * MiB);
  const down = randomBytes(16 * MiB);
  const [gotUp, gotDown] = await Promise.all([readAll(host, { slowChunk: 16 * 1024 }), readAll(guest), writeAll(guest, up), writeAll(host, down)]);
  assert.equal(sha(gotUp), sha(up));
  assert.equal(sha(gotDown), sha(down));
  await driver.close();
});

test('vsock host to guest: CONNECT P reaches the listener on port P, answered OK <port>, then the stream', async (t) => {
  const { uds, driver } = await serveVsock(t);
  const accepted = new Promise<Duplex>((resolve) => driver.listen(1234, resolve));
  const program = connect({ path: uds, allowHalfOpen: true });
  await once(program, 'connect');
  program.write('CONNECT 1234\n');
  const [first] = (await once(program, 'data')) as [Buffer];
  assert.match(first.toString(), /^OK \d+\n$/);
  const guest = await accepted;
  const data = randomBytes(4 * MiB);
  const [got] = await Promise.all([readAll(guest), writeAll(program, data)]);
  assert.equal(sha(got), sha(data));

  const refused = connect(uds);
  await once(refused, 'connect');
  refused.write('CONNECT 4321\n');
  await once(refused, 'close');
  assert.equal(refused.bytesRead, 0, 'nothing listens on guest port 4321: the host program is closed without an answer');
  await driver.close();
});
