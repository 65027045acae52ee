/**
 * Two of paravirt's net drivers over the virtio-pci transport, against two of QEMU's
 * virtio-net-pci on one QEMU hub: every frame one sends the other receives, byte for byte, with
 * QEMU's own receive filter, control queue and link status in between.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { NetDriver } from '../../src/devices/net/driver.ts';
import { NET_FEATURE_NAMES, NetFeature, formatMac } from '../../src/devices/net/wire.ts';
import { Feature, hasFeature } from '../../src/virtio/constants.ts';
import { describeFeatures } from '../../src/virtio/features.ts';
import { startQtest } from '../lab/qtest.ts';
import { virtioPciTransports } from '../lab/qtest-pci.ts';
import { requireLab } from '../lab/require.ts';

const MACS = ['52:54:00:12:34:01', '52:54:00:12:34:02'];
/** IEEE 802 local experimental ethertype: nothing in QEMU interprets these frames. */
const ETHERTYPE = 0x88b5;
const FRAMES = 50;

function frame(to: Uint8Array, from: Uint8Array, payload: number, seed: number): Uint8Array {
  const f = new Uint8Array(14 + payload);
  f.set(to, 0);
  f.set(from, 6);
  f[12] = ETHERTYPE >> 8;
  f[13] = ETHERTYPE & 0xff;
  for (let i = 14; i < f.length; i++) f[i] = (seed * 13 + i) & 0xff;
  return f;
}

for (const packed of [false, true]) {
  test(`two paravirt net drivers exchange frames through QEMU's virtio-net-pci and a hub, over virtio-pci (${packed ? 'packed' : 'split'} ring)`, async (t) => {
    if (!requireLab(t)) return;
    const nic = (i: number): string => `virtio-net-pci,netdev=p${i},addr=0${4 + i}.0,disable-legacy=on,mac=${MACS[i]},packed=${packed ? 'on' : 'off'}`;
    const m = await startQtest(
      {
        devices: ['-netdev', 'hubport,id=p0,hubid=0', '-netdev', 'hubport,id=p1,hubid=0', '-device', nic(0), '-device', nic(1)],
        sharedRam: true,
      },
      t,
    );
    const [ta, tb] = await virtioPciTransports(m, [4, 5]);
    const a = await NetDriver.open(ta);
    const b = await NetDriver.open(tb);
    assert.deepEqual([formatMac(a.mac), formatMac(b.mac)], MACS, 'each driver uses the address QEMU was given');
    assert.equal(hasFeature(a.features, Feature.RING_PACKED), packed);
    assert.ok(hasFeature(a.features, NetFeature.CTRL_VQ) && hasFeature(a.features, NetFeature.STATUS));
    assert.ok(a.linkUp && b.linkUp, 'link up, from the device configuration');
    assert.notEqual(ta.line, tb.line, 'slots 4 and 5 interrupt on different lines');

    const started = performance.now();
    for (const [from, to] of [[a, b], [b, a]] as const) {
      const sent: Uint8Array[] = [];
      for (let i = 0; i < FRAMES; i++) {
        const f = frame(to.mac, from.mac, 46 + ((i * 97) % 1455), i);
        sent.push(f);
        await from.send(f);
      }
      for (const f of sent) {
        const got = await to.next();
        assert.ok(got, 'a frame arrived');
        assert.deepEqual(got.frame, f);
      }
    }
    const exchanged = performance.now();
    // QEMU's receive filter, programmed over the control queue (QEMU starts promiscuous): with
    // promiscuous mode off a frame for an address nobody has is dropped; with it on, it arrives.
    await b.setPromiscuous(false);
    const stray = frame(Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x99), a.mac, 64, 0);
    await a.send(stray);
    await b.setPromiscuous(true);
    const marker = frame(Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x98), a.mac, 64, 1);
    await a.send(marker);
    assert.deepEqual((await b.next())?.frame, marker, 'the stray frame was filtered, the one after promiscuous mode passed');

    await a.close();
    await b.close();
    t.diagnostic(
      `QEMU ${m.qemu.version} (${m.accelerator}): ${2 * FRAMES} frames in ${(exchanged - started).toFixed(0)} ms; ` +
        `INTx on GSI ${ta.line} and ${tb.line}; negotiated ${describeFeatures(a.features, NET_FEATURE_NAMES)}`,
    );
  });
}
