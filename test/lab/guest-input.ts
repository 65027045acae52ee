/**
 * Reading a guest's input devices as a user would: find the device's /dev/input/eventN in
 * /proc/bus/input/devices, read struct input_event records from it, decode them.
 */
import assert from 'node:assert/strict';
import type { Guest } from './guest.ts';

/** struct input_event on x86-64: a 16-byte timeval, then type, code, value. */
export const INPUT_EVENT_BYTES = 24;

/** The eventN handler of the input device called `name`, from /proc/bus/input/devices. */
export async function eventNode(guest: Guest, name: string): Promise<string> {
  const devices = await guest.check('cat /proc/bus/input/devices');
  const block = devices.split('\n\n').find((b) => b.includes(`N: Name="${name}"`));
  assert.ok(block !== undefined, `the guest lists an input device named "${name}":\n${devices}`);
  const handler = /H: Handlers=.*\b(event\d+)\b/.exec(block)?.[1];
  assert.ok(handler !== undefined, `evdev handles it:\n${block}`);
  return `/dev/input/${handler}`;
}

/**
 * Start reading `count` records from `node` in the background; resolves once the reader has the
 * device open (evdev gives a client only events that come after its open).
 */
export async function startReader(guest: Guest, node: string, count: number): Promise<void> {
  await guest.check(
    `dd if=${node} of=/tmp/events bs=${INPUT_EVENT_BYTES} count=${count} 2>/dev/null & pid=$!; ` +
      `until ls -l /proc/$pid/fd 2>/dev/null | grep -q ${node}; do sleep 0.05; done`,
  );
}

/** The records once `count` have arrived, as [type, code, value]. */
export async function readRecords(guest: Guest, count: number): Promise<[number, number, number][]> {
  const hex = await guest.check(
    `until [ "$(stat -c %s /tmp/events)" -ge ${count * INPUT_EVENT_BYTES} ]; do sleep 0.05; done; od -An -v -tx1 /tmp/events`,
  );
  const bytes = Buffer.from(hex.replace(/\s+/g, ''), 'hex');
  assert.equal(bytes.length, count * INPUT_EVENT_BYTES);
  return Array.from({ length: count }, (_, i) => {
    const at = i * INPUT_EVENT_BYTES + 16;
    return [bytes.readUInt16LE(at), bytes.readUInt16LE(at + 2), bytes.readInt32LE(at + 4)];
  });
}
