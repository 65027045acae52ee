import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RngDriver } from '../../src/devices/rng/driver.ts';
import { Feature, hasFeature } from '../../src/virtio/constants.ts';
import { describeFeatures } from '../../src/virtio/features.ts';
import { startQtest } from '../lab/qtest.ts';
import { virtioPciTransport } from '../lab/qtest-pci.ts';
import { requireLab } from '../lab/require.ts';

for (const packed of [false, true]) {
  test(`paravirt's rng driver reads entropy from QEMU's virtio-rng-pci over virtio-pci (${packed ? 'packed' : 'split'} ring)`, async (t) => {
    if (!requireLab(t)) return;
    const m = await startQtest({ devices: ['-device', `virtio-rng-pci,disable-legacy=on,addr=04.0,packed=${packed ? 'on' : 'off'}`], sharedRam: true }, t);
    const transport = await virtioPciTransport(m, 4);
    const rng = await RngDriver.open(transport, { chunkBytes: 1024 });
    assert.equal(hasFeature(rng.core.features, Feature.VERSION_1), true);
    assert.equal(hasFeature(rng.core.features, Feature.RING_PACKED), packed, 'the ring layout QEMU was told to offer');

    const bytes = await rng.read(64 * 1024);
    assert.equal(bytes.length, 64 * 1024);
    // 64 KiB of entropy has every byte value and no long run of one value.
    assert.equal(new Set(bytes).size, 256);
    const ones = bytes.reduce((n, b) => n + popcount(b), 0);
    assert.ok(Math.abs(ones / (bytes.length * 8) - 0.5) < 0.01, `bit balance ${ones / (bytes.length * 8)}`);
    const again = await rng.read(4096);
    assert.notDeepEqual(again.subarray(0, 64), bytes.subarray(0, 64), 'two reads do not repeat');
    await rng.close();
    t.diagnostic(`QEMU ${m.qemu.version} (${m.accelerator}); INTx on GSI ${transport.line}; negotiated ${describeFeatures(rng.core.features)}`);
  });
}

function popcount(b: number): number {
  let n = 0;
  for (let v = b; v !== 0; v &= v - 1) n++;
  return n;
}
