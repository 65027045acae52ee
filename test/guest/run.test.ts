/**
 * `paravirt run` as a user runs it: the command boots the lab's kernel under the lab's QEMU with
 * every registered device, all served by the command's own process; the guest's shell is on the
 * command's stdin and stdout. The guest binds its stock driver to each device and shows the
 * device where a user looks for it; SIGINT (Ctrl-C) stops QEMU and the back-end and removes the
 * VM's sockets and scratch disks. The command's dashboard counts the devices' requests on /metrics.
 * QEMU, whose stderr is the command's, warns of no vhost-user protocol feature at start.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { DEVICE_TYPES } from '../../src/devices/registry.ts';
import { DeviceId } from '../../src/virtio/constants.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
/** Boot under TCG on a shared machine, from spawning to the shell prompt. */
const BOOT_DEADLINE_MS = 120_000;

/** The stock Linux driver of each device, and a command whose success shows the device to a user. */
const GUEST_VIEW: Readonly<Record<number, { driver: string; sees: string }>> = {
  [DeviceId.NET]: { driver: 'virtio_net', sees: 'ip link show | grep -q "link/ether"' },
  [DeviceId.BLOCK]: { driver: 'virtio_blk', sees: 'test -b /dev/vda' },
  [DeviceId.CONSOLE]: { driver: 'virtio_console', sees: 'test -c /dev/hvc0' },
  [DeviceId.RNG]: { driver: 'virtio_rng', sees: 'grep -q virtio_rng /sys/class/misc/hw_random/rng_current && test -c /dev/hwrng' },
  [DeviceId.BALLOON]: { driver: 'virtio_balloon', sees: 'true' },
  [DeviceId.SCSI]: { driver: 'virtio_scsi', sees: 'test -b /dev/sda' },
  [DeviceId.INPUT]: { driver: 'virtio_input', sees: 'grep -q Bus=0006 /proc/bus/input/devices' /* BUS_VIRTUAL */ },
  [DeviceId.RTC]: { driver: 'virtio_rtc', sees: 'ls /dev | grep -q -e ^ptp -e ^rtc' },
  [DeviceId.VSOCK]: { driver: 'vmw_vsock_virtio_transport', sees: 'test -c /dev/vsock' },
  [DeviceId.GPU]: { driver: 'virtio_gpu', sees: 'ls /sys/class/drm | grep -q "^card[0-9]"' },
};

test('paravirt run: a VM on every registered device, one back-end process, the shell on the terminal, stopped cleanly by SIGINT', { timeout: 240_000 }, async (t) => {
  if (!requireLab(t)) return;
  const run = new PeerProcess('paravirt run', [process.execPath, PARAVIRT, 'run'], { textStdout: true });
  t.after(() => run.stop());
  let seen = (await run.waitForOutput(/^\/ # /m, 0, 'booting to the shell prompt', BOOT_DEADLINE_MS)).index;

  /** Type `script` into the guest's shell; resolves with what it printed between two markers. */
  const shell = async (script: string): Promise<string> => {
    // The markers are printed by echo, so the typed line (which the shell echoes) never matches.
    run.send(`echo "@@""begin"; ${script}; echo "@@""end $?"\n`);
    const m = await run.waitForOutput(/@@begin\r?\n([^]*?)@@end (\d+)/, seen, `running ${script}`, BOOT_DEADLINE_MS);
    seen += m.index + m[0].length;
    assert.equal(m[2], '0', `\`${script}\` failed in the guest: ${m[1]}`);
    return m[1].replace(/\r/g, '');
  };

  const bound = new Map<number, string>();
  const listing = await shell('for d in /sys/bus/virtio/devices/*; do echo "$(cat $d/device) $(basename "$(readlink $d/driver)")"; done');
  for (const line of listing.trim().split('\n')) {
    const [id, driver] = line.split(' ');
    bound.set(Number(id), driver);
  }
  const attached = DEVICE_TYPES.filter((type) => type.qemu !== undefined);
  assert.ok(attached.length >= 9, 'the seed devices all declare how QEMU attaches them');
  for (const type of attached) {
    const view = GUEST_VIEW[type.deviceId];
    assert.ok(view !== undefined, `the test knows how a guest shows ${type.name}`);
    assert.equal(bound.get(type.deviceId), view.driver, `the guest bound ${view.driver} to ${type.name}`);
    await shell(view.sees);
  }
  // QEMU's stderr is the command's: each back-end offers VHOST_USER_PROTOCOL_F_CONFIG exactly
  // where QEMU's front-end of its type reads the configuration space from it, so QEMU warns of none.
  assert.doesNotMatch(run.output, /VHOST_USER_PROTOCOL_F_CONFIG/, 'QEMU warns of no CONFIG protocol feature offered or missing');

  // Next to the keyboard, a tablet: an absolute pointer (EV_ABS with ABS_X and ABS_Y) for the dashboard's screen.
  await shell('grep -A9 \'Name="paravirt virtio tablet"\' /proc/bus/input/devices | grep -q "^B: ABS=3$"');

  // The shell the test types into is the paravirt console's port, hvc0.
  assert.match(await shell('tty'), /\/dev\/hvc0/);

  // One process serves them all: the command itself (its banner names the QEMU it started).
  const banner = /served by this process \(pid (\d+)\), QEMU pid (\d+); files in (\S+);/.exec(run.output);
  assert.ok(banner !== null, `the command says what it started: ${run.output}`);
  const [pid, qemuPid, dir] = [Number(banner[1]), Number(banner[2]), banner[3]];
  assert.equal(pid, run.child.pid);
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  t.diagnostic(`back-end process RSS with ${attached.length} devices, guest at its prompt: ${rss?.[1]} kB`);
  for (const type of attached) assert.ok(existsSync(`${dir}/${type.name}0.sock`), `${type.name}0's socket is in ${dir}`);

  // The same process serves the dashboard, on loopback, with the devices' counters.
  const url = /dashboard on (http:\/\/127\.0\.0\.1:\d+\/);/.exec(run.output)?.[1];
  assert.ok(url !== undefined, `the command gives the dashboard's URL: ${run.output}`);
  const metrics = await (await fetch(`${url}metrics`)).text();
  const requests = /^paravirt_queue_requests_total\{device="blk0",type="blk",queue="0"\} (\d+)$/m.exec(metrics)?.[1];
  assert.ok(Number(requests) > 0, `the disk's requests are counted on /metrics: ${requests}`);

  // The dashboard's screen moves the tablet: its pointer request reaches the guest's eventq.
  const origin = new URL(url).origin;
  const control = new WebSocket(`${origin.replace('http', 'ws')}/ws/control`, { origin });
  t.after(() => control.close());
  const replies = new Map<number, (reply: { ok: boolean; error?: string }) => void>();
  control.on('message', (data: Buffer) => {
    const message = JSON.parse(data.toString('utf8')) as { t: string; id: number; ok: boolean; error?: string };
    if (message.t === 'reply') replies.get(message.id)?.(message);
  });
  await once(control, 'open');
  const eventsDelivered = async (): Promise<number> =>
    Number(/^paravirt_queue_requests_total\{device="input1",type="input",queue="0"\} (\d+)$/m.exec(await (await fetch(`${url}metrics`)).text())?.[1] ?? 0);
  const before = await eventsDelivered();
  const reply = new Promise<{ ok: boolean; error?: string }>((resolve) => replies.set(1, resolve));
  control.send(JSON.stringify({ id: 1, op: 'pointer', x: 0.25, y: 0.75 }));
  assert.deepEqual(await reply, { ok: true, t: 'reply', id: 1 }, 'the dashboard has a tablet to move');
  assert.ok((await eventsDelivered()) > before, 'the pointer events went into the buffers the guest posted');
  control.close();

  run.child.kill('SIGINT');
  const exit = await run.exited;
  assert.deepEqual(exit, { code: 0, signal: null }, run.describe('stopping on SIGINT'));
  assert.throws(() => process.kill(qemuPid, 0), { code: 'ESRCH' }, 'QEMU is gone');
  assert.equal(existsSync(dir), false, 'the sockets and scratch disks are removed');
});
