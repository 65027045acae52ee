import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Delivery, completeChecksum, receiveOffload, transmitOffload, transmitRefusal } from '../../../src/devices/net/offload.ts';
import { GsoType, HdrFlag, NO_OFFLOAD, NetFeature, type Offload } from '../../../src/devices/net/wire.ts';
import { featureBit } from '../../../src/virtio/constants.ts';

const bits = (...b: number[]): bigint => b.reduce((m, x) => m | featureBit(x), 0n);
const CSUM: Offload = { ...NO_OFFLOAD, flags: HdrFlag.NEEDS_CSUM, csumStart: 34, csumOffset: 16 };
const TSO: Offload = { ...CSUM, gsoType: GsoType.TCPV4, gsoSize: 1448, hdrLen: 54 };

test('completeChecksum: the RFC 1071 example, and a zero result stored as 0xffff', () => {
  const f = Uint8Array.of(0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0, 0);
  assert.deepEqual(completeChecksum(f, 0, 8).subarray(8), Uint8Array.of(0x22, 0x0d));
  assert.deepEqual(f.subarray(8), Uint8Array.of(0, 0), 'the input is not modified');
  assert.deepEqual(completeChecksum(Uint8Array.of(0xff, 0xff, 0, 0), 0, 2).subarray(2), Uint8Array.of(0xff, 0xff));
});

test('transmit: offloads need their HOST_* features, checksums inside the frame, and sizes within limits', () => {
  const all = bits(NetFeature.CSUM, NetFeature.HOST_TSO4, NetFeature.HOST_TSO6, NetFeature.HOST_UFO);
  assert.equal(transmitRefusal(NO_OFFLOAD, 13, all, 1500), 'runt');
  assert.equal(transmitRefusal(NO_OFFLOAD, 1518, all, 1500), undefined);
  assert.equal(transmitRefusal(NO_OFFLOAD, 1519, all, 1500), 'oversize');
  assert.equal(transmitRefusal(CSUM, 100, all, 1500), undefined);
  assert.equal(transmitRefusal(CSUM, 100, 0n, 1500), 'badOffload', 'NEEDS_CSUM without CSUM');
  assert.equal(transmitRefusal(CSUM, 51, all, 1500), 'badOffload', 'checksum field past the end');
  assert.equal(transmitRefusal(TSO, 60000, all, 1500), undefined);
  assert.equal(transmitRefusal(TSO, 60000, bits(NetFeature.CSUM), 1500), 'badOffload', 'TSO4 without HOST_TSO4');
  assert.equal(transmitRefusal({ ...TSO, gsoType: GsoType.TCPV4 | GsoType.ECN }, 60000, all, 1500), 'badOffload', 'ECN without HOST_ECN');
  assert.equal(transmitRefusal({ ...TSO, gsoType: 2 }, 60000, all, 1500), 'badOffload', 'an unknown GSO type');
  assert.equal(transmitRefusal({ ...TSO, gsoSize: 0 }, 60000, all, 1500), 'badOffload');
  assert.equal(transmitRefusal(TSO, 70000, all, 1500), 'oversize');
  assert.deepEqual(transmitOffload({ ...CSUM, flags: HdrFlag.NEEDS_CSUM | HdrFlag.DATA_VALID | 0x40 }), CSUM, 'receive-only and unknown flags are cleared');
  assert.equal(transmitOffload({ ...NO_OFFLOAD, flags: HdrFlag.DATA_VALID }), NO_OFFLOAD);
});

test('receive: offloads the driver has not enabled are completed or refused', () => {
  const frame = new Uint8Array(100);
  const guestAll = bits(NetFeature.GUEST_CSUM, NetFeature.GUEST_TSO4, NetFeature.GUEST_ECN);
  const into = new Delivery();
  const passed = receiveOffload(frame, TSO, guestAll, into);
  assert.equal(passed, into, 'filled in place');
  assert.deepEqual({ frame: into.frame, meta: into.meta }, { frame, meta: TSO });
  assert.equal(receiveOffload(frame, TSO, bits(NetFeature.GUEST_CSUM), into), 'offloadUnsupported');
  assert.equal(receiveOffload(frame, { ...TSO, gsoType: GsoType.TCPV4 | GsoType.ECN }, bits(NetFeature.GUEST_CSUM, NetFeature.GUEST_TSO4), into), 'offloadUnsupported');
  assert.equal(receiveOffload(frame, { ...CSUM, csumStart: 90 }, guestAll, into), 'badOffload');
  const done = receiveOffload(frame, CSUM, 0n, into);
  assert.ok(typeof done !== 'string');
  assert.equal(done.meta, NO_OFFLOAD);
  assert.notEqual(done.frame, frame, 'a checksummed copy');
  const valid = receiveOffload(frame, { ...NO_OFFLOAD, flags: HdrFlag.DATA_VALID }, 0n, into);
  assert.ok(typeof valid !== 'string');
  assert.equal(valid.meta.flags, 0, 'without GUEST_CSUM flags are zero');
});
