import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { shareDir, startGuest } from '../lab/guest.ts';
import { requireLab } from '../lab/require.ts';

/** The host end of a chardev: a Unix socket QEMU connects to when it starts. */
function hostEnd(path: string): { connected: Promise<Socket>; received(count: number): Promise<Buffer> } {
  const server = createServer();
  server.listen(path);
  const connected = once(server, 'connection').then(([s]) => {
    server.close();
    return s as Socket;
  });
  let data = Buffer.alloc(0);
  let waiter: { count: number; resolve(b: Buffer): void } | undefined;
  void connected.then((s) => s.on('data', (chunk: Buffer) => {
    data = Buffer.concat([data, chunk]);
    if (waiter && data.length >= waiter.count) {
      const { count, resolve } = waiter;
      waiter = undefined;
      resolve(data.subarray(0, count));
      data = data.subarray(count);
    }
  }));
  return {
    connected,
    received(count) {
      if (data.length >= count) {
        const out = data.subarray(0, count);
        data = data.subarray(count);
        return Promise.resolve(out);
      }
      return new Promise((resolve) => (waiter = { count, resolve }));
    },
  };
}

/**
 * In the guest: open `dev`, make it raw if it is a tty, say "R", read 32 bytes, say "OK" and
 * print what was read. The host writes only after "R", so nothing arrives before the port is open.
 */
const roundTrip = (dev: string): string =>
  `exec 5<>${dev}; stty raw -echo <&5 2>/dev/null; printf R >&5; head -c 32 <&5; printf OK >&5`;

test('virtio-serial: bytes cross a named port and a console port in both directions', async (t) => {
  if (!requireLab(t)) return;
  const share = shareDir(t, 'serial');
  const port = hostEnd(join(share.dir, 'port.sock'));
  const console = hostEnd(join(share.dir, 'console.sock'));
  const guest = await startGuest(t, {
    name: 'virtio-serial',
    devices: [
      '-device', 'virtio-serial-pci,id=vser0',
      '-chardev', `socket,id=port0,path=${share.qemuPath(join(share.dir, 'port.sock'))}`,
      '-device', 'virtserialport,chardev=port0,name=org.paravirt.test.0,id=vport0',
      '-chardev', `socket,id=hvc0,path=${share.qemuPath(join(share.dir, 'console.sock'))}`,
      '-device', 'virtconsole,chardev=hvc0,id=vcon0',
    ],
  });
  const [portSocket, consoleSocket] = await Promise.all([port.connected, console.connected]);
  t.after(() => {
    portSocket.destroy();
    consoleSocket.destroy();
  });

  const named = (await guest.check('grep -l "^org.paravirt.test.0$" /sys/class/virtio-ports/*/name')).trim();
  const dev = `/dev/${named.split('/')[4]}`;
  assert.match(dev, /^\/dev\/vport\d+p\d+$/);

  for (const [label, path, end, socket] of [['port', dev, port, portSocket], ['console', '/dev/hvc0', console, consoleSocket]] as const) {
    const payload = randomBytes(16).toString('hex');
    const result = guest.run(roundTrip(path));
    assert.equal((await end.received(1)).toString(), 'R', `${label}: guest opened ${path}`);
    socket.write(payload);
    assert.equal((await end.received(2)).toString(), 'OK', `${label}: guest read the host's bytes`);
    const r = await result;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, payload, `${label}: guest received exactly what the host sent`);
  }
  // QEMU reports each open and close of a port; the named port's first report is its opening.
  let event;
  do event = await guest.nextEvent('VSERPORT_CHANGE');
  while (event.data?.id !== 'vport0');
  assert.equal(event.data.open, true, 'QEMU saw the guest open the named port');
});
