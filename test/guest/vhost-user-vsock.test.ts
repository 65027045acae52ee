/**
 * A stock Linux guest (vmw_vsock_virtio_transport) talks through paravirt's vsock device behind
 * QEMU's vhost-user-vsock-pci, to host programs on Unix sockets (hybrid vsock). The guest's side
 * is /bin/vsock (scripts/lab/guest-programs/vsock.c) copying files of its RAM file system; the
 * host's side is this test.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import { connect, createServer, type Socket } from 'node:net';
import { pino } from 'pino';
import { VsockDevice } from '../../src/devices/vsock/device.ts';
import { listenHybrid, unixSocketHost } from '../../src/devices/vsock/hybrid.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { bootGuest, shareDir, type Guest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';
import { readAll, writeAll } from '../lab/streams.ts';

const MiB = 1024 * 1024;
const GUEST_CID = 7;
/** The device's receive buffer per connection (its default). */
const BUF_ALLOC = 256 * 1024;
const log = pino({ level: process.env.PARAVIRT_LOG ?? 'warn' });

function sha(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

interface VsockGuest {
  readonly guest: Guest;
  readonly device: VsockDevice;
  /** The hybrid side's socket: host programs CONNECT here, guest port P connects to `${uds}_P`. */
  readonly uds: string;
}

/** The device in this process (its counters are the test's to read), served to a booted guest. */
async function bootWithVsock(t: TestContext, name: string): Promise<VsockGuest> {
  const share = shareDir(t, name);
  const uds = join(share.dir, 'v.sock');
  const socketPath = join(share.dir, 'vhost.sock');
  const device = new VsockDevice({ guestCid: GUEST_CID, host: unixSocketHost(uds), bufAlloc: BUF_ALLOC });
  const hybrid = await listenHybrid(device, uds, log);
  const server = BackendServer.listen(device, { socketPath }, log);
  let guest: Guest;
  try {
    guest = await bootGuest({
      name,
      devices: ['-chardev', `socket,id=vuvs,path=${share.qemuPath(socketPath)}`, '-device', 'vhost-user-vsock-pci,chardev=vuvs'],
    });
  } catch (err) {
    await server.close();
    await hybrid.close();
    throw err;
  }
  // QEMU goes first: it talks vhost-user synchronously and would wait on a back-end that left.
  t.after(async () => {
    await guest.shutdown();
    await server.close();
    await hybrid.close();
  });
  assert.match(await guest.check('ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/'), /virtio\d+/, 'the stock driver bound the device');
  return { guest, device, uds };
}

/** A host program listening on guest-visible host port `port`; its connections as they come. */
async function hostPort(t: TestContext, uds: string, port: number, onConnection: (s: Socket) => void): Promise<void> {
  const server = createServer({ allowHalfOpen: true }, onConnection);
  t.after(() => server.close());
  server.listen(`${uds}_${port}`);
  await once(server, 'listening');
}

/** The guest's `sha256sum` of a file. */
async function guestSha(guest: Guest, path: string): Promise<string> {
  return (await guest.check(`sha256sum ${path}`)).split(/\s+/)[0];
}

test('vhost-user-vsock: 16 MiB guest to host past a slow host reader, then 16 MiB host to guest, sha256 matching; the back-end holds at most its credit', async (t) => {
  if (!requireLab(t)) return;
  const { guest, device, uds } = await bootWithVsock(t, 'vu-vsock-16m');

  // Guest to host: the host program reads 16 KiB per millisecond at most, slower than the guest sends.
  await guest.check(`head -c ${16 * MiB} /dev/urandom > /tmp/up`, { timeoutMs: 60_000 });
  const upSha = await guestSha(guest, '/tmp/up');
  let received: Promise<Buffer> | undefined;
  await hostPort(t, uds, 5000, (s) => {
    received = readAll(s, { slowChunk: 16 * 1024, pauseMs: 1 }).then((b) => {
      s.end(); // the guest's copy ends once the host closes its side too
      return b;
    });
  });
  let start = process.hrtime.bigint();
  await guest.check(`vsock connect 2 5000 < /tmp/up > /dev/null`, { timeoutMs: 120_000 });
  const upMs = Number(process.hrtime.bigint() - start) / 1e6;
  assert.ok(received !== undefined, 'the host program was connected');
  assert.equal(sha(await received), upSha);
  const afterUp = device.counters.snapshot().device;
  t.diagnostic(`guest to host 16 MiB in ${upMs.toFixed(0)} ms; guest out of credit ${afterUp.creditExhausted} times; back-end held at most ${afterUp.bufferedToHostPeak} bytes for the host`);
  assert.ok(afterUp.creditExhausted > 0, 'the slow host reader stopped the guest through credit');
  assert.ok(afterUp.bufferedToHostPeak <= BUF_ALLOC, `the back-end held at most one receive buffer, not ${afterUp.bufferedToHostPeak} bytes`);
  assert.equal(afterUp.creditViolations, 0);

  // Host to guest: a host program CONNECTs to the guest's listener and sends 16 MiB.
  await guest.check(`vsock listen 5001 < /dev/null > /tmp/down 2> /tmp/listen.err &
    until grep -q listening /tmp/listen.err; do sleep 0.1; done`);
  const down = randomBytes(16 * MiB);
  const program = connect({ path: uds, allowHalfOpen: true });
  await once(program, 'connect');
  program.write('CONNECT 5001\n');
  const [answer] = (await once(program, 'data')) as [Buffer];
  assert.match(answer.toString(), /^OK \d+\n$/);
  start = process.hrtime.bigint();
  await writeAll(program, down);
  await once(program, 'close'); // the guest read everything, closed, and the device reset the stream
  await guest.check('while pidof vsock > /dev/null; do sleep 0.1; done', { timeoutMs: 120_000 });
  const downMs = Number(process.hrtime.bigint() - start) / 1e6;
  assert.equal(await guestSha(guest, '/tmp/down'), sha(down));
  const afterDown = device.counters.snapshot().device;
  t.diagnostic(`host to guest 16 MiB in ${downMs.toFixed(0)} ms; back-end held at most ${afterDown.bufferedToGuestPeak} bytes for the guest`);
  assert.deepEqual([afterDown.bufferedToHost, afterDown.bufferedToGuest], [0, 0], 'nothing left in the back-end');
});

test('vhost-user-vsock: 32 concurrent guest connections, each echoed back whole by the host', async (t) => {
  if (!requireLab(t)) return;
  const { guest, uds } = await bootWithVsock(t, 'vu-vsock-32');
  const CONNECTIONS = 32;
  const open: Socket[] = [];
  let openAtOnce = 0;
  // Echo only once all 32 are connected: no guest copy can finish before, so all are open at once.
  await hostPort(t, uds, 7000, (s) => {
    open.push(s);
    if (open.length < CONNECTIONS) return;
    openAtOnce = open.filter((c) => !c.destroyed && !c.readableEnded).length;
    for (const c of open) c.pipe(c);
  });
  const out = await guest.check(`for i in $(seq ${CONNECTIONS}); do head -c 65536 /dev/urandom > /tmp/c$i; done
    for i in $(seq ${CONNECTIONS}); do vsock connect 2 7000 < /tmp/c$i > /tmp/e$i & done
    failed=0; for job in $(jobs -p); do wait $job || failed=$((failed + 1)); done
    for i in $(seq ${CONNECTIONS}); do [ "$(sha256sum < /tmp/c$i)" = "$(sha256sum < /tmp/e$i)" ] && echo same; done
    echo failed=$failed`, { timeoutMs: 120_000 });
  assert.equal(openAtOnce, CONNECTIONS, 'all 32 connections were open at once');
  assert.equal(out.match(/^same$/gm)?.length, CONNECTIONS, out);
  assert.match(out, /failed=0/);
});
