/**
 * A stock Linux guest (virtio_input + evdev) drives paravirt's input device through QEMU's
 * vhost-user-input-pci, which asks the back-end for its configuration with GET_CONFIG/SET_CONFIG.
 * The back-end is run as a user would run it (`paravirt serve input`), and the host types
 * through its control socket; the guest reads /dev/input/eventN and the test decodes the
 * struct input_event records.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { keyCode } from '../../src/devices/input/keys.ts';
import { Abs, EvType, KEY_SHIFT, Led, SYN_REPORT } from '../../src/devices/input/wire.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { type Guest, startGuest } from '../lab/guest.ts';
import { eventNode, readRecords, startReader } from '../lab/guest-input.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));

/** `paravirt serve input --kind KIND` with a control socket, and a line-at-a-time client of it. */
async function serveInput(t: TestContext, kind: string): Promise<{ socketPath: string; command(line: string): Promise<string>; backend: PeerProcess }> {
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'vu-input-'));
  const socketPath = join(dir, 'input.sock');
  const controlPath = join(dir, 'control.sock');
  const backend = new PeerProcess(
    'paravirt serve input',
    [process.execPath, PARAVIRT, 'serve', 'input', '--socket-path', socketPath, '--kind', kind, '--control-socket', controlPath],
    { textStdout: true },
  );
  t.after(async () => {
    await backend.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
  const control = connect(controlPath);
  control.setEncoding('utf8');
  t.after(() => control.destroy());
  let buffered = '';
  control.on('data', (d: string) => (buffered += d));
  const command = async (line: string): Promise<string> => {
    control.write(`${line}\n`);
    while (!buffered.includes('\n')) await once(control, 'data');
    const nl = buffered.indexOf('\n');
    const answer = buffered.slice(0, nl);
    buffered = buffered.slice(nl + 1);
    return answer;
  };
  return { socketPath, command, backend };
}

async function bootWith(t: TestContext, socketPath: string): Promise<Guest> {
  const qemu = qemuCommand();
  const guest = await startGuest(t, {
    name: 'vu-input',
    devices: ['-chardev', `socket,id=vuin,path=${qemu.toQemuPath(socketPath)}`, '-device', 'vhost-user-input-pci,chardev=vuin'],
  });
  await guest.check('modprobe evdev');
  return guest;
}

test('vhost-user-input keyboard: the guest sees its name, and keys typed from the host arrive in /dev/input in order', async (t) => {
  if (!requireLab(t)) return;
  const { socketPath, command, backend } = await serveInput(t, 'keyboard');
  const guest = await bootWith(t, socketPath);
  const node = await eventNode(guest, 'paravirt virtio keyboard');
  const caps = await guest.check(`cat /sys/class/input/${node.split('/').pop()}/device/capabilities/led`);
  assert.equal(caps.trim(), '7', 'NUML, CAPSL and SCROLLL');

  // "Ok" then Enter: shift down, o, shift up, k, enter; each press and release closed by SYN_REPORT.
  const o = keyCode('o')!;
  const k = keyCode('k')!;
  const enter = keyCode('enter')!;
  const SYN: [number, number, number] = [EvType.SYN, SYN_REPORT, 0];
  const expected: [number, number, number][] = [
    [EvType.KEY, KEY_SHIFT, 1], SYN, [EvType.KEY, o, 1], SYN, [EvType.KEY, o, 0], SYN, [EvType.KEY, KEY_SHIFT, 0], SYN,
    [EvType.KEY, k, 1], SYN, [EvType.KEY, k, 0], SYN, [EvType.KEY, enter, 1], SYN, [EvType.KEY, enter, 0], SYN,
  ];
  await startReader(guest, node, expected.length);
  assert.equal(await command('type Ok\\n'), 'ok');
  assert.deepEqual(await readRecords(guest, expected.length), expected);

  // LED state the guest sets (an EV_LED write to the event node) reaches the host.
  await guest.check(`printf '\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\021\\0\\001\\0\\001\\0\\0\\0' > ${node}`);
  // The back-end logs each status event after recording it (the guest's keyboard handler may
  // send the other LEDs' state first).
  await backend.waitForOutput(new RegExp(`"type":${EvType.LED},"code":${Led.CAPSL},"value":1,.*status from the guest`), 0, 'logging CAPSL on');
  assert.equal(await command('leds'), 'leds numlock=0 capslock=1 scrolllock=0');

  const exit = await backend.stop();
  assert.equal(exit.code, 0, 'the back-end exits cleanly on SIGTERM');
});

test('vhost-user-input tablet: an absolute position from the host arrives as ABS_X and ABS_Y', async (t) => {
  if (!requireLab(t)) return;
  const { socketPath, command } = await serveInput(t, 'tablet');
  const guest = await bootWith(t, socketPath);
  const node = await eventNode(guest, 'paravirt virtio tablet');
  await startReader(guest, node, 3);
  assert.equal(await command('abs 1234 30000'), 'ok');
  assert.deepEqual(await readRecords(guest, 3), [[EvType.ABS, Abs.X, 1234], [EvType.ABS, Abs.Y, 30000], [EvType.SYN, SYN_REPORT, 0]]);
});
