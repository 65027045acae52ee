import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { bootGuest, startGuest } from '../lab/guest.ts';
import { qemuCommand, systemQemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

test('the agent runs scripts in a stock Linux guest and returns exit code, stdout and stderr', async (t) => {
  if (!requireLab(t)) return;
  const guest = await startGuest(t, { name: 'agent' });

  const r = await guest.run('echo out; echo err >&2; exit 7');
  assert.deepEqual([r.code, r.stdout, r.stderr], [7, 'out\n', 'err\n']);

  // Every byte value survives the serial line, including NUL, CR, LF and the framing's own characters.
  const all = await guest.run("i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done");
  assert.deepEqual([...all.stdoutBytes], Array.from({ length: 256 }, (_, i) => i));

  assert.equal((await guest.check('uname -r')).trim(), guest.release);
  assert.equal((await guest.check('cat /proc/1/comm')).trim(), 'init');
  assert.match(guest.log(), /paravirt: modules:/, 'the console log holds what init printed');
  assert.equal((await guest.qmp('query-status') as { status: string }).status, 'running');

  // A script that outlives its deadline fails alone: its late answer is not taken for the next one's.
  await assert.rejects(guest.run('sleep 3; echo late', { timeoutMs: 200 }), /did not answer within 200 ms/);
  assert.equal(await guest.check('echo next'), 'next\n');
});

test('a guest that cannot boot is reported with QEMU\'s or the kernel\'s own words, and leaves nothing behind', async (t) => {
  if (!requireLab(t)) return;
  const noDevice = bootGuest({ name: 'bad-device', devices: ['-device', 'no-such-device'] });
  await assert.rejects(noDevice, (err: Error) => {
    assert.match(err.message, /QEMU exited \(code 1\) before the guest agent was ready/);
    assert.match(err.message, /qemu: .*no-such-device/);
    return true;
  });
  const noInit = bootGuest({ name: 'no-init', append: 'rdinit=/no-such-init' });
  await assert.rejects(noInit, (err: Error) => {
    assert.match(err.message, /Kernel panic/);
    return true;
  });
  const leftovers = readdirSync(qemuCommand().shareDir).filter((d) => d.startsWith('bad-device-') || d.startsWith('no-init-'));
  assert.deepEqual(leftovers, []);
});

test('several guests run at once, each with its own agent', async (t) => {
  if (!requireLab(t)) return;
  const [a, b] = await Promise.all([startGuest(t, { name: 'twin-a' }), startGuest(t, { name: 'twin-b' })]);
  assert.notEqual(a.dir, b.dir);
  await Promise.all([a.check('echo a > /tmp/who'), b.check('echo b > /tmp/who')]);
  assert.deepEqual([await a.check('cat /tmp/who'), await b.check('cat /tmp/who')], ['a\n', 'b\n']);
});

test('a hot-plugged device gets its driver from the guest\'s uevent listener', async (t) => {
  if (!requireLab(t)) return;
  const guest = await startGuest(t, { name: 'hotplug', devices: ['-device', 'pcie-root-port,id=slot1,chassis=1'] });
  assert.equal(await guest.check('cat /sys/class/misc/hw_random/rng_current'), 'none\n', 'no hardware RNG before the plug');
  await guest.qmp('device_add', { driver: 'virtio-rng-pci', id: 'hot-rng', bus: 'slot1' });
  // The guest finishes probing on its own schedule: wait there, for the driver, not for a time.
  await guest.check('until grep -q virtio_rng /sys/class/misc/hw_random/rng_current 2>/dev/null; do usleep 20000; done', { timeoutMs: 30_000 });
  assert.match(await guest.check('cut -d" " -f1 /proc/modules'), /^virtio_rng$/m);
});

test('the same guest boots under the distribution\'s QEMU', async (t) => {
  if (!requireLab(t)) return;
  const qemu = systemQemuCommand();
  const guest = await startGuest(t, { name: 'system-qemu', qemu, devices: ['-device', 'virtio-rng-pci'] });
  const { qemu: v } = (await guest.qmp('query-version')) as { qemu: { major: number; minor: number; micro: number } };
  assert.equal(`${v.major}.${v.minor}.${v.micro}`, qemu.version);
  assert.match(await guest.check('cat /sys/class/misc/hw_random/rng_current'), /^virtio_rng\.\d+$/m);
});
