/**
 * paravirt's console driver against devices it did not write: QEMU's virtio-serial-pci with a
 * virtserialport and a virtconsole on socket chardevs, over virtio-pci through qtest (names,
 * bytes both ways, host clients seen, a port hot-added with QMP device_add virtserialport and removed); and
 * against `paravirt serve console` run as a user runs it, over the vhost-user front-end.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { ConsoleDriver, type DriverPort } from '../../src/devices/console/driver.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { QmpClient } from '../lab/qmp.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { startQtest } from '../lab/qtest.ts';
import { virtioPciTransport } from '../lab/qtest-pci.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const log = pino({ level: 'warn' });

async function client(path: string): Promise<Socket> {
  const s = connect(path);
  await once(s, 'connect');
  return s;
}

/** Exactly `n` bytes from a stream (a host socket or a driver port). */
async function readExactly(s: Readable, n: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  while (got < n) {
    const chunk = s.read() as Buffer | null;
    if (chunk === null) {
      await once(s, 'readable');
      continue;
    }
    parts.push(chunk);
    got += chunk.length;
  }
  return Buffer.concat(parts);
}

function written(port: DriverPort, data: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => port.write(data, (err) => (err ? reject(err) : resolve())));
}

/** Both directions through one port whose host end is `host`. */
async function exchange(port: DriverPort, host: Socket, bytes: number): Promise<void> {
  await port.open();
  await port.hostReady();
  const toHost = randomBytes(bytes);
  const arrived = readExactly(host, toHost.length);
  await written(port, toHost);
  assert.deepEqual(await arrived, toHost, `port ${port.portName ?? port.id}: the host end got what the driver wrote`);
  const toGuest = randomBytes(bytes);
  host.write(toGuest);
  assert.deepEqual(await readExactly(port, toGuest.length), toGuest, `port ${port.portName ?? port.id}: the driver got what the host end wrote`);
}

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';

  test(`console driver against QEMU's virtio-serial-pci over virtio-pci (${ring} ring): names, both directions, host clients, hot-add and removal`, async (t) => {
    if (!requireLab(t)) return;
    const qemu = qemuCommand();
    const dir = mkdtempSync(join(qemu.shareDir, 'console-peer-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const sock = (name: string): string => join(dir, `${name}.sock`);
    const chardev = (id: string): string[] => ['-chardev', `socket,id=${id},path=${qemu.toQemuPath(sock(id))},server=on,wait=off`];
    const m = await startQtest({
      sharedRam: true,
      memoryMiB: 128,
      devices: [
        '-qmp', `unix:${qemu.toQemuPath(sock('qmp'))},server=on,wait=off`,
        '-device', `virtio-serial-pci,id=vser0,disable-legacy=on,addr=04.0,max_ports=4,packed=${packed ? 'on' : 'off'}`,
        ...chardev('con'), '-device', 'virtconsole,bus=vser0.0,chardev=con,id=con0',
        ...chardev('named'), '-device', 'virtserialport,bus=vser0.0,chardev=named,name=org.paravirt.peer,id=port1',
        ...chardev('hot'),
      ],
    }, t);
    const qmp = new QmpClient(await client(sock('qmp')));
    await qmp.negotiate();

    // Closed at the end, not in an after hook: those run after startQtest's, which stops QEMU.
    const driver = await ConsoleDriver.open(await virtioPciTransport(m, 4), { packed });
    assert.equal(driver.maxPorts, 4, 'max_nr_ports from the configuration space');
    const named = await driver.port('org.paravirt.peer');
    const con = await driver.consolePort();
    assert.equal(con.id, 0, 'QEMU puts the virtconsole on port 0');
    assert.equal(named.hostConnected, false, 'no host client yet');

    const host = await client(sock('named'));
    t.after(() => host.destroy());
    await exchange(named, host, 64 * 1024);
    const conHost = await client(sock('con'));
    t.after(() => conHost.destroy());
    await exchange(con, conHost, 4096);

    // QEMU reports the driver's PORT_OPEN.
    await named.closePort();
    // QEMU throttles VSERPORT_CHANGE to one a second per port, timed on the virtual clock under
    // qtest: step past the window so the held-back event is sent.
    if (m.accelerator === 'qtest') await m.bus.clockStep(2_000_000_000n);
    let event;
    do event = await qmp.nextEvent('VSERPORT_CHANGE');
    while (event.data?.id !== 'port1' || event.data.open !== false);

    // The host client leaves: QEMU sends PORT_OPEN 0.
    host.destroy();
    while (named.hostConnected) await once(named, 'host');

    // A port hot-added with QMP device_add.
    await qmp.execute('device_add', { driver: 'virtserialport', bus: 'vser0.0', chardev: 'hot', name: 'org.paravirt.hot', id: 'port2' });
    const hot = await driver.port('org.paravirt.hot');
    const hotHost = await client(sock('hot'));
    t.after(() => hotHost.destroy());
    await exchange(hot, hotHost, 8192);

    // ... and removed with device_del: QEMU sends DEVICE_REMOVE.
    const removed = once(driver, 'remove');
    await qmp.execute('device_del', { id: 'port2' });
    assert.equal(((await removed)[0] as DriverPort).id, hot.id);
    assert.equal(driver.ports.has(hot.id), false);
    await driver.close();
  });

  test(`console driver against \`paravirt serve console\` over the vhost-user front-end (${ring} ring)`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'console-serve-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const socketPath = join(dir, 'vhost.sock');
    const backend = new PeerProcess('paravirt serve console', [
      process.execPath, PARAVIRT, 'serve', 'console', '--socket-path', socketPath, '--max-ports', '3',
      '--console', `unix:${join(dir, 'con.sock')}`, '--port', `org.paravirt.a=unix:${join(dir, 'a.sock')}`,
    ], { textStdout: true });
    t.after(() => backend.stop());
    await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');

    const driver = await ConsoleDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.CONSOLE, log }), { log, packed });
    assert.equal(driver.maxPorts, 3);
    const a = await driver.port('org.paravirt.a');
    assert.equal((await driver.consolePort()).id, 0);
    const host = await client(join(dir, 'a.sock'));
    t.after(() => host.destroy());
    await exchange(a, host, 256 * 1024);
    host.destroy();
    while (a.hostConnected) await once(a, 'host');
    await driver.close();
  });
}
