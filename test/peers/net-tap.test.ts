/**
 * virtio-net through a host TAP interface: the driver asks the host kernel for its own address
 * with ARP and gets the kernel's reply, over device → TAP and back. Needs root and /dev/net/tun.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { NetDevice } from '../../src/devices/net/device.ts';
import { NetDriver } from '../../src/devices/net/driver.ts';
import { TapPort } from '../../src/devices/net/tap.ts';
import { HdrFlag, parseMac } from '../../src/devices/net/wire.ts';
import { createLoopback } from '../../src/transports/mmio/loopback.ts';
import { requireLab } from '../lab/require.ts';

const GUEST_MAC = '52:54:00:77:00:02';
const HOST_IP = [10, 213, 77, 1];
const GUEST_IP = [10, 213, 77, 2];

function tapUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'creating a TAP interface needs root';
  if (!existsSync('/dev/net/tun')) return 'there is no /dev/net/tun';
  if (!['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip'].some((p) => existsSync(p))) return 'the ip command (iproute2) is not installed';
  return undefined;
}

/** An ARP request "who has `target`, tell `senderIp`" from `mac` (RFC 826). */
function arpRequest(mac: Uint8Array, senderIp: number[], target: number[]): Uint8Array {
  const f = new Uint8Array(60);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  f.set([0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01], 12);
  f.set(mac, 22);
  f.set(senderIp, 28);
  f.set(target, 38);
  return f;
}

test('a virtio-net driver resolves the host address over a TAP interface', async (t) => {
  if (!requireLab(t, tapUnavailable())) return;
  const tap = TapPort.open({ name: 'pvnet-test0' });
  const ip = (...args: string[]): void => void execFileSync('ip', args);
  const dev = new NetDevice({ port: tap, mac: GUEST_MAC });
  const { transport } = createLoopback(dev, { memoryBytes: 8 << 20 });
  const drv = await NetDriver.open(transport);
  try {
    assert.equal(tap.name, 'pvnet-test0');
    ip('addr', 'add', `${HOST_IP.join('.')}/24`, 'dev', tap.name);
    ip('link', 'set', 'dev', tap.name, 'up');
    await drv.send(arpRequest(parseMac(GUEST_MAC), GUEST_IP, HOST_IP));
    // The host may also send its own traffic (IPv6 neighbour discovery): wait for the ARP reply.
    for (;;) {
      const f = await drv.next();
      assert.ok(f !== undefined, 'the driver closed before the ARP reply arrived');
      const isArpReply = f.frame[12] === 0x08 && f.frame[13] === 0x06 && f.frame[21] === 2;
      if (!isArpReply) continue;
      assert.deepEqual(f.frame.subarray(0, 6), parseMac(GUEST_MAC), 'addressed to the driver');
      assert.deepEqual([...f.frame.subarray(28, 32)], HOST_IP, 'the sender is the host address');
      assert.equal(f.meta.flags & HdrFlag.NEEDS_CSUM, 0);
      break;
    }
    assert.ok(tap.counters.txPackets >= 1);
    assert.ok(tap.counters.rxPackets >= 1);
  } finally {
    await drv.close();
    tap.close();
  }
  assert.throws(() => TapPort.open({ name: 'a-name-far-too-long' }), /TAP interface name "a-name-far-too-long" is not a name of at most 15 bytes/);
});
