import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { ConsoleDevice } from '../../../src/devices/console/device.ts';
import { withDefaults } from '../../../src/devices/host-options.ts';
import { deviceType } from '../../../src/devices/registry.ts';
import { Backend, type DevicePlan } from '../../../src/run/backend.ts';

const log = pino({ level: 'silent' });

function plan(id: string, name: string, values: Record<string, unknown> = {}): DevicePlan {
  const type = deviceType(name)!;
  return { id, type, values: withDefaults(type.host.options, values) };
}

function scratchDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-backend-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('one back-end serves several device types, each on its own socket, and close removes them', async (t) => {
  const dir = scratchDir(t);
  const backend = await Backend.start({ socketDir: dir, devices: [plan('rng0', 'rng'), plan('console0', 'console'), plan('rtc0', 'rtc')], console: 'console0' }, log);
  try {
    assert.deepEqual(backend.devices.map((d) => [d.id, d.type.name, d.transport, d.socketPath]), [
      ['rng0', 'rng', 'vhost-user', join(dir, 'rng0.sock')],
      ['console0', 'console', 'vhost-user', join(dir, 'console0.sock')],
      ['rtc0', 'rtc', 'vhost-user', join(dir, 'rtc0.sock')],
    ]);
    for (const d of backend.devices) assert.ok(existsSync(d.socketPath), `${d.id} listens`);
    assert.equal(backend.device('rng0')?.instance.devices[0].counters.snapshot().queues.length, 1, 'counters are there to read');
    assert.deepEqual(backend.device('rtc0')?.values.clocks, deviceType('rtc')!.host.options.find((o) => o.flags.startsWith('--clocks'))?.defaultValue);
    // The console's port 0 is attached to the shared console from the start.
    const console = backend.device('console0')!.instance.devices[0] as ConsoleDevice;
    assert.equal(console.port(0)?.hostConnected, true);
    assert.ok(backend.console !== undefined);
  } finally {
    await backend.close();
  }
  for (const d of backend.devices) assert.equal(existsSync(d.socketPath), false, `${d.id}'s socket is removed`);
});

test('a device that cannot be built fails the start in one sentence, and what was built is released', async (t) => {
  const dir = scratchDir(t);
  await assert.rejects(Backend.start({ socketDir: dir, devices: [plan('rng0', 'rng'), plan('blk0', 'blk')] }, log), /^Error: --image <path> is required\.$/);
  assert.equal(existsSync(join(dir, 'rng0.sock')), false, 'the rng socket made before is gone');
});

test('a plan naming a device twice, or a console that is not in it, is refused', async (t) => {
  const dir = scratchDir(t);
  await assert.rejects(Backend.start({ socketDir: dir, devices: [plan('x', 'rng'), plan('x', 'rng')] }, log), /device id x is planned twice/);
  await assert.rejects(Backend.start({ socketDir: dir, devices: [plan('rng0', 'rng')], console: 'console0' }, log), /console device console0 is not in the plan/);
});

test('a device can stop being served and be served again, its socket going and coming', async (t) => {
  const dir = scratchDir(t);
  const backend = await Backend.start({ socketDir: dir, devices: [plan('net0', 'net'), plan('rng0', 'rng')] }, log);
  try {
    const socket = join(dir, 'net0.sock');
    await backend.setListening('net0', false);
    assert.equal(existsSync(socket), false);
    assert.ok(existsSync(join(dir, 'rng0.sock')), 'the other devices are still served');
    await backend.setListening('net0', true);
    assert.ok(existsSync(socket));
    // Off and on again from two places at once: the stop's removal of the socket comes first.
    await Promise.all([backend.setListening('net0', false), backend.setListening('net0', true)]);
    assert.ok(existsSync(socket), 'the socket of the second request is there');
    await assert.rejects(backend.setListening('nope', true), /no hosted device is called nope/);
  } finally {
    await backend.close();
  }
});
