import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  NET_CONFIG,
  GsoType,
  HdrFlag,
  NET_HDR_SIZE,
  NetFeature,
  decodeMacTable,
  decodeNetHeader,
  encodeMacTable,
  encodeNetHeader,
  formatMac,
  missingNetRequirement,
  parseMac,
} from '../../../src/devices/net/wire.ts';
import { featureBit } from '../../../src/virtio/constants.ts';

test('feature bit numbers are those of VIRTIO 1.2 §5.1.3', () => {
  assert.deepEqual(
    { ...NetFeature },
    {
      CSUM: 0, GUEST_CSUM: 1, CTRL_GUEST_OFFLOADS: 2, MTU: 3, MAC: 5, GUEST_TSO4: 7, GUEST_TSO6: 8, GUEST_ECN: 9, GUEST_UFO: 10,
      HOST_TSO4: 11, HOST_TSO6: 12, HOST_ECN: 13, HOST_UFO: 14, MRG_RXBUF: 15, STATUS: 16, CTRL_VQ: 17, CTRL_RX: 18, CTRL_VLAN: 19,
      CTRL_RX_EXTRA: 20, GUEST_ANNOUNCE: 21, MQ: 22, CTRL_MAC_ADDR: 23, SPEED_DUPLEX: 63,
    },
  );
});

test('virtio_net_hdr is 12 little-endian bytes in spec order', () => {
  const hdr = { flags: HdrFlag.NEEDS_CSUM, gsoType: GsoType.TCPV6 | GsoType.ECN, hdrLen: 0x0102, gsoSize: 0x0304, csumStart: 0x0506, csumOffset: 0x0708 };
  const bytes = encodeNetHeader(hdr, 0x090a);
  assert.equal(NET_HDR_SIZE, 12);
  assert.deepEqual(bytes, Uint8Array.of(1, 0x84, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 0x09));
  assert.deepEqual(decodeNetHeader(bytes), { ...hdr, numBuffers: 0x090a });
});

test('header encode and decode are inverse for every field value', () => {
  const u16 = fc.integer({ min: 0, max: 0xffff });
  const u8 = fc.integer({ min: 0, max: 0xff });
  fc.assert(
    fc.property(fc.record({ flags: u8, gsoType: u8, hdrLen: u16, gsoSize: u16, csumStart: u16, csumOffset: u16, numBuffers: u16 }), (h) => {
      assert.deepEqual(decodeNetHeader(encodeNetHeader(h, h.numBuffers)), { ...h });
    }),
  );
});

test('configuration space layout: mac 0, status 6, max_virtqueue_pairs 8, mtu 10, speed 12, duplex 16', () => {
  const mac = parseMac('52:54:00:ab:cd:ef');
  const bytes = NET_CONFIG.encode({ mac, status: 3, maxVirtqueuePairs: 0x8000, mtu: 9000, speed: 0xffff_ffff, duplex: 1 });
  assert.equal(bytes.length, NET_CONFIG.size);
  assert.deepEqual(bytes.subarray(NET_CONFIG.offset.mac, 6), mac);
  assert.deepEqual(bytes.subarray(NET_CONFIG.offset.status), Uint8Array.of(3, 0, 0, 0x80, 0x28, 0x23, 0xff, 0xff, 0xff, 0xff, 1));
  assert.deepEqual(NET_CONFIG.decode(bytes), { mac, status: 3, maxVirtqueuePairs: 0x8000, mtu: 9000, speed: 0xffff_ffff, duplex: 1 });
  assert.throws(() => NET_CONFIG.decode(new Uint8Array(10)), /configuration space is 10 bytes, expected 17/);
});

test('MAC table: two le32-counted lists; counts that do not fill the data exactly are refused', () => {
  const unicast = [parseMac('52:54:00:00:00:01')];
  const multicast = [parseMac('01:00:5e:00:00:01'), parseMac('33:33:00:00:00:01')];
  const bytes = encodeMacTable({ unicast, multicast });
  assert.equal(bytes.length, 4 + 6 + 4 + 12);
  assert.deepEqual(bytes.subarray(0, 4), Uint8Array.of(1, 0, 0, 0));
  assert.deepEqual(bytes.subarray(10, 14), Uint8Array.of(2, 0, 0, 0));
  assert.deepEqual(decodeMacTable(bytes), { unicast, multicast });
  assert.equal(decodeMacTable(bytes.subarray(0, bytes.length - 1)), undefined);
  assert.equal(decodeMacTable(Uint8Array.of(...bytes, 0)), undefined);
  assert.equal(decodeMacTable(Uint8Array.of(0, 0, 0, 0)), undefined);
  assert.equal(decodeMacTable(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0)), undefined);
  assert.deepEqual(decodeMacTable(new Uint8Array(8)), { unicast: [], multicast: [] });
});

test('MAC addresses parse and format; bad text is named', () => {
  assert.equal(formatMac(parseMac('52-54-00-AB-cd-0f')), '52:54:00:ab:cd:0f');
  assert.throws(() => parseMac('52:54:00:ab:cd'), /"52:54:00:ab:cd" is not a MAC address/);
});

test('feature dependencies of §5.1.3.1 are checked', () => {
  assert.equal(missingNetRequirement(featureBit(NetFeature.CSUM) | featureBit(NetFeature.HOST_TSO4)), undefined);
  assert.equal(missingNetRequirement(featureBit(NetFeature.HOST_TSO4)), 'HOST_TSO4 requires CSUM');
  assert.equal(missingNetRequirement(featureBit(NetFeature.CSUM) | featureBit(NetFeature.HOST_ECN)), 'HOST_ECN requires one of HOST_TSO4, HOST_TSO6');
  assert.equal(missingNetRequirement(featureBit(NetFeature.MQ)), 'MQ requires CTRL_VQ');
});
