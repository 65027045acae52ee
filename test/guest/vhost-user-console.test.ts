/**
 * A stock Linux guest (virtio_console built in) drives paravirt's console device through QEMU's
 * generic vhost-user-test-device-pci (virtio-id=3): named ports, the console carrying a shell,
 * 16 MiB each way with a slow host reader, host clients coming and going, a port added at run
 * time. Split and packed rings.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { ConsoleDevice } from '../../src/devices/console/device.ts';
import { openEndpoint } from '../../src/devices/console/endpoints.ts';
import type { ConsolePort } from '../../src/devices/console/port.ts';
import { BackendServer } from '../../src/transports/vhost-user/backend-server.ts';
import { startGuest, type Guest } from '../lab/guest.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const MAX_PORTS = 4;
const MiB16 = 16 << 20;

async function client(path: string): Promise<Socket> {
  const s = connect(path);
  await once(s, 'connect');
  return s;
}

/** Collect from `s` until `pattern` shows up in what arrived. */
async function expectText(s: Socket, pattern: RegExp): Promise<string> {
  let text = '';
  for (;;) {
    const chunk = s.read() as Buffer | null;
    if (chunk !== null) {
      text += chunk.toString('latin1');
      if (pattern.test(text)) return text;
      continue;
    }
    await once(s, 'readable');
  }
}

/**
 * Read `n` bytes from `s` deliberately slowly: at most 256 KiB per timer turn of 20 ms (about
 * 12 MiB/s), slower than the guest writes, so the device has to hold the guest back.
 */
function slowRead(s: Socket, n: number): Promise<string> {
  const hash = createHash('sha256');
  let got = 0;
  let budget = 256 * 1024;
  return new Promise((resolve) => {
    const onData = (chunk: Buffer): void => {
      hash.update(chunk);
      got += chunk.length;
      budget -= chunk.length;
      if (got >= n) {
        s.off('data', onData);
        s.pause();
        assert.equal(got, n, 'no byte more than the guest wrote');
        resolve(hash.digest('hex'));
      } else if (budget <= 0) {
        s.pause();
        setTimeout(() => {
          budget = 256 * 1024;
          s.resume();
        }, 20);
      }
    };
    s.on('data', onData);
    s.resume();
  });
}

async function until(port: ConsolePort, event: string, done: () => boolean): Promise<void> {
  while (!done()) await once(port, event);
}

/** The /dev node of the port called `name`, found through sysfs as a user would. */
async function devOf(guest: Guest, name: string): Promise<string> {
  const file = (await guest.check(`grep -lx '${name}' /sys/class/virtio-ports/*/name`)).trim();
  return `/dev/${file.split('/')[4]}`;
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`vhost-user console (${ring} ring): named ports, a shell on hvc0, 16 MiB each way, host clients, hot-added and removed port`, { timeout: 600_000 }, async (t) => {
    if (!requireLab(t)) return;
    const qemu = qemuCommand();
    const dir = mkdtempSync(join(qemu.shareDir, 'vu-console-'));
    const log = pino({ level: 'warn' });
    const device = new ConsoleDevice([{ id: 0, console: true }, { id: 1, name: 'org.paravirt.data' }, { id: 2, name: 'org.paravirt.log' }], {
      maxPorts: MAX_PORTS,
      size: { cols: 100, rows: 30 },
    });
    const closers = [
      await openEndpoint({ kind: 'unix', path: join(dir, 'console.sock') }, device.port(0)!, log),
      await openEndpoint({ kind: 'unix', path: join(dir, 'data.sock') }, device.port(1)!, log),
      await openEndpoint({ kind: 'file', path: join(dir, 'log.txt') }, device.port(2)!, log),
    ];
    const server = BackendServer.listen(device, { socketPath: join(dir, 'vu.sock') }, log);
    t.after(async () => {
      await server.close();
      for (const c of closers) await c();
      rmSync(dir, { recursive: true, force: true });
    });

    const guest = await startGuest(t, {
      name: `vu-console-${ring}`,
      devices: [
        '-chardev', `socket,id=vucon,path=${qemu.toQemuPath(join(dir, 'vu.sock'))}`,
        '-device', `vhost-user-test-device-pci,chardev=vucon,virtio-id=3,num_vqs=${2 * MAX_PORTS + 2},config_size=12,packed=${packed ? 'on' : 'off'}`,
      ],
    });

    // Names, as the guest's sysfs shows them.
    const names = (await guest.check('cat /sys/class/virtio-ports/*/name')).split('\n').filter((l) => l !== '');
    assert.deepEqual(names.sort(), ['org.paravirt.data', 'org.paravirt.log']);
    const data = await devOf(guest, 'org.paravirt.data');
    const logDev = await devOf(guest, 'org.paravirt.log');
    assert.match(data, /^\/dev\/vport\d+p1$/);

    // No host client: a read on the port ends at once (the guest knows the host end is closed).
    assert.equal(await guest.check(`head -c 1 ${data} | wc -c`), '0\n');
    // A host client connects: the guest sees the port open (POLLIN only once data comes).
    const dataClient = await client(join(dir, 'data.sock'));
    const read = guest.run(`head -c 5 ${data}`);
    await until(device.port(1)!, 'guest-open', () => device.port(1)!.guestOpen);
    dataClient.write('hello');
    assert.equal((await read).stdout, 'hello');
    await until(device.port(1)!, 'guest-close', () => !device.port(1)!.guestOpen);

    // The file port appends what the guest writes.
    await guest.check(`printf 'log line\\n' > ${logDev}`);
    assert.equal(readFileSync(join(dir, 'log.txt'), 'utf8'), 'log line\n');

    // 16 MiB guest to host with a slow host reader: nothing lost.
    const sum = (await guest.check(`head -c ${MiB16} /dev/urandom > /tmp/out && sha256sum /tmp/out`)).split(' ')[0];
    const sent = guest.run(`cat /tmp/out > ${data}`, { timeoutMs: 300_000 });
    assert.equal(await slowRead(dataClient, MiB16), sum, 'the host read what the guest wrote');
    assert.equal((await sent).code, 0);

    // 16 MiB host to guest.
    const toGuest = randomBytes(MiB16);
    const got = guest.run(`head -c ${MiB16} ${data} | sha256sum`, { timeoutMs: 300_000 });
    await until(device.port(1)!, 'guest-open', () => device.port(1)!.guestOpen);
    dataClient.write(toGuest);
    assert.equal((await got).stdout.split(' ')[0], createHash('sha256').update(toGuest).digest('hex'), 'the guest read what the host wrote');

    // The client leaves: a guest read ends at once again.
    dataClient.destroy();
    await until(device.port(1)!, 'host-change', () => !device.port(1)!.hostConnected);
    assert.equal(await guest.check(`head -c 1 ${data} | wc -c`), '0\n');

    // The console port carries a shell.
    const con = await client(join(dir, 'console.sock'));
    t.after(() => con.destroy());
    await guest.check("setsid sh -c 'exec sh -i <>/dev/hvc0 >&0 2>&0' >/dev/null 2>&1 </dev/null &");
    con.write('echo MARK$((6*7))\n');
    await expectText(con, /MARK42/);

    // A port added while the guest runs.
    device.addPort({ id: 3, name: 'org.paravirt.late' });
    const late = await guest.check("for i in $(seq 200); do grep -lx org.paravirt.late /sys/class/virtio-ports/*/name 2>/dev/null && break; sleep 0.05; done");
    assert.match(late, /vport\d+p3\/name/);

    // ... and removed: the guest drops it.
    device.removePort(3);
    const gone = await guest.check('for i in $(seq 200); do grep -qx org.paravirt.late /sys/class/virtio-ports/*/name 2>/dev/null || break; sleep 0.05; done; cat /sys/class/virtio-ports/*/name');
    assert.doesNotMatch(gone, /org\.paravirt\.late/);
  });
}
