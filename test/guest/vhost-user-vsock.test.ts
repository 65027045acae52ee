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
import { fileURLToPath } from 'node:url';
import { connect, createServer, type Socket } from 'node:net';
import { pino } from 'pino';
import { VsockDevice } from '../../src/devices/vsock/device.ts';
import { listenHybrid, unixSocketHost } from '../../src/devices/vsock/hybrid.ts';
import { MAX_MESSAGE } from '../../src/devices/vsock/wire.ts';
import { type SeqpacketSocket, UnixListener, connectSeqpacket } from '../../src/native/unix-socket.ts';
import { whenReadable, whenWritable } from '../../src/native/readiness.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { bootGuest, shareDir, startGuest, type Guest } from '../lab/guest.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { requireLab } from '../lab/require.ts';
import { readAll, writeAll } from '../lab/streams.ts';

const MiB = 1024 * 1024;
const GUEST_CID = 7;
/** The device's receive buffer per connection (its default). */
const BUF_ALLOC = 256 * 1024;
const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
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

test('vhost-user-vsock: data both ways and many connections (one guest)', async (t) => {
  if (!requireLab(t)) return;
  const vsock = await bootWithVsock(t, 'vu-vsock');
  await t.test('16 MiB guest to host past a slow host reader, then 16 MiB host to guest, sha256 matching; the back-end holds at most its credit', (t) => sixteenMiB(t, vsock));
  await t.test('32 concurrent guest connections, each echoed back whole by the host', (t) => concurrent(t, vsock));
});

async function sixteenMiB(t: TestContext, { guest, device, uds }: VsockGuest): Promise<void> {

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
}

test('vhost-user-vsock: SOCK_SEQPACKET both ways keeps every message whole, sizes from 1 byte to the 128 KiB limit', async (t) => {
  if (!requireLab(t)) return;
  const vsock = await bootWithVsock(t, 'vu-vsock-seq');
  await t.test('guest connects to a host SOCK_SEQPACKET listener: messages each way arrive one by one with their sizes and bytes', (t) => guestToHostSeq(t, vsock));
  await t.test('a host program connects through PATH.seqpacket to a guest listener: messages each way arrive whole', (t) => hostToGuestSeq(t, vsock));
  await t.test('a message above the limit: the guest refuses to send it (EMSGSIZE), a host one resets the connection and is counted', (t) => oversizeSeq(t, vsock));
});

/** Message k of the guest program's seqpacket modes: `size` bytes of the letter 'a' + k % 26. */
function guestMessage(k: number, size: number): Buffer {
  return Buffer.alloc(size, 0x61 + (k % 26));
}

/** The guest program's report of a received message: its length and the sum of its bytes. */
function report(message: Uint8Array): string {
  return `${message.length} ${message.reduce((sum, b) => sum + b, 0)}`;
}

/** Every message until the peer shuts down, each as it came. */
async function receiveMessages(socket: SeqpacketSocket): Promise<Uint8Array[]> {
  const messages: Uint8Array[] = [];
  for (;;) {
    const got = socket.receive(MAX_MESSAGE);
    if (got === null) {
      await whenReadable(socket.fd);
      continue;
    }
    assert.equal(got.length, got.bytes.length, 'no message is longer than the limit');
    if (got.length === 0) return messages;
    messages.push(got.bytes);
  }
}

async function sendMessage(socket: SeqpacketSocket, message: Uint8Array): Promise<void> {
  while (!socket.send(message)) await whenWritable(socket.fd);
}

/** Host messages of these sizes, each filled with its own byte. */
function hostMessages(sizes: number[]): Buffer[] {
  return sizes.map((size, k) => Buffer.alloc(size, 0x30 + k));
}

async function guestToHostSeq(t: TestContext, { guest, device, uds }: VsockGuest): Promise<void> {
  // 100000 and 131072 bytes are more than one packet (Linux sends at most 64 KiB per packet).
  const up = [1, 1000, 100_000, 65_536, 5, MAX_MESSAGE, 3];
  const down = hostMessages([7, 70_000, 1, MAX_MESSAGE, 4096]);
  const listener = UnixListener.listenSeqpacket(`${uds}_6000`);
  t.after(() => listener.close());
  const host = (async () => {
    const socket = await listener.accept();
    try {
      const got = await receiveMessages(socket);
      for (const m of down) await sendMessage(socket, m);
      socket.shutdownWrite();
      return got;
    } finally {
      // Closed only once the guest read everything: the guest program exits at our shutdown.
      await whenReadable(socket.fd);
      socket.close();
    }
  })();
  const out = await guest.check(`vsock connect-seq 2 6000 ${up.join(' ')}`, { timeoutMs: 120_000 });
  const got = await host;
  assert.deepEqual(got.map((m) => m.length), up, 'the host read each guest message whole, in order');
  got.forEach((m, k) => assert.ok(Buffer.from(m).equals(guestMessage(k, up[k])), `guest message ${k} has its own bytes`));
  assert.deepEqual(out.trimEnd().split('\n'), down.map(report), 'the guest read each host message whole, in order');
  const counts = device.counters.snapshot().device;
  assert.deepEqual([counts.oversizeMessages, counts.creditViolations], [0, 0]);
}

async function hostToGuestSeq(t: TestContext, { guest, uds }: VsockGuest): Promise<void> {
  const up = [90_000, 2, 131_072, 17];
  const down = hostMessages([5, 100_000, 64, 1]);
  await guest.check(`vsock listen-seq 6001 ${up.join(' ')} > /tmp/seq-down 2> /tmp/seq-listen.err &
    until grep -q listening /tmp/seq-listen.err; do sleep 0.1; done`);
  const program = await connectSeqpacket(`${uds}.seqpacket`);
  t.after(() => program.close());
  await sendMessage(program, Buffer.from('CONNECT 6001\n'));
  const answer = await nextMessage(program);
  assert.match(Buffer.from(answer).toString(), /^OK \d+\n$/);
  const got = await receiveMessages(program);
  for (const m of down) await sendMessage(program, m);
  program.shutdownWrite();
  await guest.check('while pidof vsock > /dev/null; do sleep 0.1; done', { timeoutMs: 60_000 });
  assert.deepEqual(got.map((m) => m.length), up);
  got.forEach((m, k) => assert.ok(Buffer.from(m).equals(guestMessage(k, up[k])), `guest message ${k} has its own bytes`));
  assert.deepEqual((await guest.check('cat /tmp/seq-down')).trimEnd().split('\n'), down.map(report));
}

async function nextMessage(socket: SeqpacketSocket): Promise<Uint8Array> {
  for (;;) {
    const got = socket.receive(MAX_MESSAGE);
    if (got !== null) return got.bytes;
    await whenReadable(socket.fd);
  }
}

async function oversizeSeq(t: TestContext, { guest, device, uds }: VsockGuest): Promise<void> {
  const listener = UnixListener.listenSeqpacket(`${uds}_6002`);
  t.after(() => listener.close());
  const accepted = listener.accept();
  const refused = await guest.run(`vsock connect-seq 2 6002 ${MAX_MESSAGE + 1}`);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /sending a message: Message too long/);
  (await accepted).close();

  // The host program's message is one byte too many: the connection is reset, nothing partial reaches the guest.
  const before = device.counters.snapshot().device;
  const hostSide = listener.accept();
  const run = guest.run('vsock connect-seq 2 6002', { timeoutMs: 60_000 });
  const socket = await hostSide;
  // The guest program shuts down its sending side, then reads: its end of stream here says it
  // is reading. A reset before that would fail its shutdown() (ENOTCONN) instead of ending its read.
  assert.deepEqual(await receiveMessages(socket), [], 'the guest sent nothing before shutting down its sending side');
  await sendMessage(socket, Buffer.alloc(MAX_MESSAGE + 1, 0x78));
  const result = await run;
  socket.close();
  // Linux reads a RST on a connected socket as its end (virtio_transport_do_close sets no error).
  assert.deepEqual([result.code, result.stdout], [0, ''], 'the connection ended with no part of the message delivered');
  const now = device.counters.snapshot().device;
  assert.deepEqual([now.oversizeMessages - before.oversizeMessages, now.resets - before.resets], [1, 1], 'one oversize message, one reset');
}

async function concurrent(t: TestContext, { guest, uds }: VsockGuest): Promise<void> {
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
}

/**
 * Back-end restart. QEMU 11.1's vhost-user-vsock-pci cannot take a new back-end under a running
 * device: it handles no chardev events, so nothing renegotiates vhost-user when the socket comes
 * back (with `reconnect-ms` the chardev reconnects, but QEMU goes on with the old session's
 * state and its next message waits for an acknowledgement the new process was never asked to
 * give, freezing the VM), and a cold-plugged device with `reconnect-ms` fails to realize (the
 * socket connects in the background). Nor does QEMU send TRANSPORT_RESET: the event queue is
 * QEMU's own, and it writes that event only after a migration, which vhost-user-vsock refuses.
 * What works is a new device for the new process: device_del, chardev-remove, chardev-add,
 * device_add. The guest's driver goes with the old device and resets every connection it had;
 * the new one takes new connections at once.
 */
test('vhost-user-vsock: `paravirt serve vsock` killed and restarted: open connections are reset on both sides, new ones work on a re-plugged device', async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'vu-vsock-restart');
  const socketPath = join(share.dir, 'vhost.sock');
  const uds = join(share.dir, 'v.sock');
  const serve = async (): Promise<PeerProcess> => {
    const peer = new PeerProcess('paravirt serve vsock', [process.execPath, PARAVIRT, 'serve', 'vsock', '--socket-path', socketPath, '--guest-cid', String(GUEST_CID), '--uds-path', uds], { textStdout: true });
    await peer.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
    return peer;
  };
  let backend = await serve();
  t.after(() => backend.kill());
  const chardev = { id: 'vuvs', backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: share.qemuPath(socketPath) } }, server: false } } };
  const guest = await startGuest(t, {
    name: 'vu-vsock-restart',
    devices: [
      '-device', 'pcie-root-port,id=slot1,chassis=1',
      '-chardev', `socket,id=vuvs,path=${share.qemuPath(socketPath)}`,
      '-device', 'vhost-user-vsock-pci,id=vs,chardev=vuvs,bus=slot1',
    ],
  });
  const bound = 'until ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ 2>/dev/null | grep -q virtio; do usleep 20000; done';
  await guest.check(bound);

  // Two idle connections: the guest's to host port 8000, a host program's to guest port 8001.
  let accepted: (s: Socket) => void = () => {};
  const guestSide = new Promise<Socket>((resolve) => (accepted = resolve));
  await hostPort(t, uds, 8000, (s) => accepted(s));
  // Their stdin stays open (sleep), so only the connection itself can end them.
  await guest.check(`sleep 600 | vsock connect 2 8000 > /dev/null 2> /tmp/g.err &
    sleep 600 | vsock listen 8001 > /dev/null 2> /tmp/h.err &
    until grep -q listening /tmp/h.err 2>/dev/null; do usleep 20000; done`);
  const fromGuest = await guestSide;
  const toGuest = connect({ path: uds, allowHalfOpen: true });
  toGuest.write('CONNECT 8001\n');
  assert.match(((await once(toGuest, 'data')) as [Buffer])[0].toString(), /^OK \d+\n$/);

  backend.kill();
  // The host programs' streams end with the process that carried them.
  await Promise.all([fromGuest, toGuest].map((s) => {
    const ended = once(s, 'end');
    s.resume();
    return ended;
  }));
  backend = await serve();
  await guest.qmp('device_del', { id: 'vs' });
  await guest.nextEvent('DEVICE_DELETED');
  await guest.qmp('chardev-remove', { id: 'vuvs' });
  await guest.qmp('chardev-add', chardev);
  await guest.qmp('device_add', { driver: 'vhost-user-vsock-pci', id: 'vs', chardev: 'vuvs', bus: 'slot1' });
  await guest.check(bound, { timeoutMs: 30_000 });

  // The guest's programs saw their connections fail when the old device went.
  const failed = (file: string): string => `grep -q 'the socket:' ${file}`;
  const ended = await guest.check(`until ${failed('/tmp/g.err')} && ${failed('/tmp/h.err')}; do usleep 20000; done; cat /tmp/g.err /tmp/h.err`);
  t.diagnostic(ended.replace(/\n/g, ' | '));
  assert.equal(ended.match(/the socket: (Transport endpoint is not connected|Connection reset by peer)$/gm)?.length, 2, ended);

  // New connections both ways, through the new process.
  await hostPort(t, uds, 8002, (s) => s.pipe(s));
  assert.equal(await guest.check('echo hello again | vsock connect 2 8002'), 'hello again\n');
  await guest.check(`vsock listen 8003 < /dev/null > /tmp/got 2> /tmp/l.err &
    until grep -q listening /tmp/l.err; do usleep 20000; done`);
  const program = connect({ path: uds, allowHalfOpen: true });
  program.write('CONNECT 8003\n');
  assert.match(((await once(program, 'data')) as [Buffer])[0].toString(), /^OK \d+\n$/);
  program.end('to the guest\n');
  await once(program, 'close');
  assert.equal(await guest.check('while pidof vsock > /dev/null; do usleep 20000; done; cat /tmp/got'), 'to the guest\n');
});
