import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NetDevice } from '../../../src/devices/net/device.ts';
import { NET_DRIVER_FEATURES } from '../../../src/devices/net/driver.ts';
import { type NetPort, createCable } from '../../../src/devices/net/port.ts';
import { L2Switch } from '../../../src/devices/net/switch.ts';
import {
  NET_CONFIG,
  CtrlAck,
  CtrlClass,
  CtrlGuestOffloads,
  CtrlMac,
  CtrlMq,
  CtrlRx,
  CtrlVlan,
  CtrlAnnounce,
  Duplex,
  GsoType,
  HdrFlag,
  NET_HDR_SIZE,
  NO_OFFLOAD,
  NetFeature,
  NetStatus,
  type Offload,
  encodeMacTable,
  encodeNetHeader,
  formatMac,
  parseMac,
} from '../../../src/devices/net/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceId, DeviceStatus, featureBit, hasFeature } from '../../../src/virtio/constants.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { BROADCAST, MAC_A, MAC_B, frame, log, logged, nextFrame, station, until } from './fixture.ts';

const MAC_C = '52:54:00:00:00:0c';
const MULTICAST = '01:00:5e:00:00:01';

/** `f` with an 802.1Q tag for `vid` inserted after the addresses. */
function tagged(f: Uint8Array, vid: number): Uint8Array {
  const out = new Uint8Array(f.length + 4);
  out.set(f.subarray(0, 12), 0);
  out.set([0x81, 0x00, vid >> 8, vid & 0xff], 12);
  out.set(f.subarray(12), 16);
  return out;
}

test('configuration space: mac, link status, queue pairs, mtu, speed and duplex; driver writes are undone', async () => {
  const [port] = createCable();
  const dev = new NetDevice({ port, mac: MAC_A, mtu: 9000, queuePairs: 3, speed: 10000, duplex: Duplex.FULL });
  const cfg = NET_CONFIG.decode(dev.config);
  assert.deepEqual(cfg.mac, parseMac(MAC_A));
  assert.equal(cfg.status, NetStatus.LINK_UP);
  assert.equal(cfg.maxVirtqueuePairs, 3);
  assert.equal(cfg.mtu, 9000);
  assert.equal(cfg.speed, 10000);
  assert.equal(cfg.duplex, Duplex.FULL);
  assert.equal(dev.config.length, NET_CONFIG.size);
  for (const bit of [NetFeature.MAC, NetFeature.MTU, NetFeature.MQ, NetFeature.SPEED_DUPLEX, NetFeature.STATUS, NetFeature.CTRL_VQ]) {
    assert.ok(hasFeature(dev.features, bit), `offers ${bit}`);
  }
  assert.equal(dev.numQueues, 7, 'three pairs and the control queue');
  const { transport } = createLoopback(dev, { memoryBytes: 1 << 20, log });
  await transport.writeConfig(NET_CONFIG.offset.mtu, Uint8Array.of(0, 1));
  assert.equal(NET_CONFIG.decode(await transport.readConfig(0, NET_CONFIG.size)).mtu, 9000);
});

test('device options are checked with one sentence naming the value', () => {
  const [port] = createCable();
  assert.throws(() => new NetDevice({ port, mtu: 67 }), /MTU 67 is not an integer from 68 to 65535/);
  assert.throws(() => new NetDevice({ port, queuePairs: 0 }), /queue pair count 0/);
  assert.throws(() => new NetDevice({ port, mac: 'nope' }), /"nope" is not a MAC address/);
  assert.throws(() => new NetDevice({ port, queuePairs: 2, features: { control: false } }), /MQ requires CTRL_VQ/);
  assert.throws(() => new NetDevice({ port, features: { checksum: false, segmentation: true } }), /GUEST_TSO4 requires GUEST_CSUM/);
});

test('the driver reads mac, mtu and link state; link down and up arrive as configuration changes', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A, mtu: 4000 });
  const b = await station(sw.createPort(), { mac: MAC_B });
  try {
    assert.equal(a.drv.mtu, 4000);
    assert.ok(a.drv.linkUp);
    const changes: boolean[] = [];
    a.drv.onLinkChange((up) => changes.push(up));
    a.dev.setLink(false);
    await until(() => changes.length === 1);
    assert.equal(a.drv.linkUp, false);
    await b.drv.send(frame(MAC_A, MAC_B, 60));
    assert.equal(a.dev.traffic.drops.linkDown, 1, 'a frame for a device whose link is down is dropped');
    a.dev.setLink(true);
    await until(() => changes.length === 2);
    assert.deepEqual(changes, [false, true]);
    const f = frame(MAC_A, MAC_B, 61);
    await b.drv.send(f);
    assert.deepEqual((await nextFrame(a.drv)).frame, f);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('announce: the driver hears VIRTIO_NET_S_ANNOUNCE, sends its gratuitous frame, and the ack clears the bit', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A });
  const b = await station(sw.createPort(), { mac: MAC_B });
  try {
    const gratuitous = frame(BROADCAST, MAC_A, 60, 9);
    a.drv.onAnnounce(() => a.drv.send(gratuitous));
    assert.ok(a.dev.announce());
    assert.ok(NET_CONFIG.decode(a.dev.config).status & NetStatus.ANNOUNCE);
    assert.deepEqual((await nextFrame(b.drv)).frame, gratuitous);
    await until(() => (NET_CONFIG.decode(a.dev.config).status & NetStatus.ANNOUNCE) === 0);
    assert.equal(NET_CONFIG.decode(a.dev.config).status, NetStatus.LINK_UP);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('receive filter: promiscuous, unicast table, multicast, broadcast, no-unicast and VLAN', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A });
  const b = await station(sw.createPort(), { mac: MAC_B });
  /** Send `f` from b, then a marker a always accepts; true when `f` reached a's driver first. */
  let seed = 0;
  const reaches = async (f: Uint8Array): Promise<boolean> => {
    const marker = frame(MAC_A, MAC_B, 60, ++seed);
    await b.drv.send(f);
    await b.drv.send(marker);
    const first = await nextFrame(a.drv);
    if (first.frame.length === marker.length && first.frame.every((x, i) => x === marker[i])) return false;
    assert.deepEqual(first.frame, f);
    assert.deepEqual((await nextFrame(a.drv)).frame, marker);
    return true;
  };
  try {
    assert.equal(await reaches(frame(MAC_C, MAC_B, 60)), false, 'unicast for another address is dropped with promiscuous mode off');
    assert.equal(a.dev.traffic.drops.filtered, 1);
    await a.drv.setPromiscuous(true);
    assert.equal(await reaches(frame(MAC_C, MAC_B, 60)), true);
    await a.drv.setPromiscuous(false);
    await a.drv.setMacTable({ unicast: [parseMac(MAC_C)], multicast: [] });
    assert.equal(await reaches(frame(MAC_C, MAC_B, 60)), true, 'an address in the unicast table is received');
    assert.equal(await reaches(frame(MULTICAST, MAC_B, 60)), false, 'multicast not in the table is dropped');
    await a.drv.setAllMulticast(true);
    assert.equal(await reaches(frame(MULTICAST, MAC_B, 60)), true);
    await a.drv.setAllMulticast(false);
    await a.drv.setMacTable({ unicast: [], multicast: [parseMac(MULTICAST)] });
    assert.equal(await reaches(frame(MULTICAST, MAC_B, 60)), true, 'an address in the multicast table is received');
    assert.equal(await reaches(frame(MAC_C, MAC_B, 60)), false, 'the new table replaced the unicast entries');
    await a.drv.setNoMulticast(true);
    assert.equal(await reaches(frame(MULTICAST, MAC_B, 60)), false, 'NOMULTI wins over the table');
    assert.equal(await reaches(frame(BROADCAST, MAC_B, 60)), true, 'broadcast is not multicast for NOMULTI');
    await a.drv.setNoBroadcast(true);
    assert.equal(await reaches(frame(BROADCAST, MAC_B, 60)), false);
    await a.drv.setNoBroadcast(false);
    await a.drv.setAllUnicast(true);
    assert.equal(await reaches(frame(MAC_C, MAC_B, 60)), true, 'ALLUNI accepts any unicast');
    await a.drv.setVlan(5, true);
    assert.equal(await reaches(tagged(frame(MAC_A, MAC_B, 60), 5)), true, 'a VLAN in the table passes');
    assert.equal(await reaches(tagged(frame(MAC_A, MAC_B, 60), 6)), false, 'a VLAN not in the table is dropped');
    await a.drv.setVlan(5, false);
    assert.equal(await reaches(tagged(frame(MAC_A, MAC_B, 60), 5)), false, 'VLAN_DEL removes it');
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('MAC_ADDR_SET moves the address the filter accepts and the config mac; a reset restores the configured one', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A });
  const b = await station(sw.createPort(), { mac: MAC_B });
  try {
    await a.drv.setMac(MAC_C);
    assert.deepEqual(a.drv.mac, parseMac(MAC_C));
    assert.deepEqual(NET_CONFIG.decode(a.dev.config).mac, parseMac(MAC_C));
    const f = frame(MAC_C, MAC_B, 70);
    await b.drv.send(f);
    assert.deepEqual((await nextFrame(a.drv)).frame, f);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
  assert.deepEqual(a.dev.mac, parseMac(MAC_A));
});

test('control commands with a wrong length, an unknown class or command get VIRTIO_NET_ERR, are counted, and the device keeps going', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A, queuePairs: 2 });
  const b = await station(sw.createPort(), { mac: MAC_B });
  try {
    const bad: [number, number, Uint8Array][] = [
      [CtrlClass.RX, CtrlRx.PROMISC, new Uint8Array(0)],
      [CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(1, 0)],
      [CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(2)],
      [CtrlClass.RX, 6, Uint8Array.of(1)],
      [CtrlClass.MAC, CtrlMac.TABLE_SET, encodeMacTable({ unicast: [parseMac(MAC_C)], multicast: [] }).subarray(0, 13)],
      [CtrlClass.MAC, CtrlMac.TABLE_SET, Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0)],
      [CtrlClass.MAC, CtrlMac.ADDR_SET, parseMac(MAC_C).subarray(0, 5)],
      [CtrlClass.MAC, 2, new Uint8Array(6)],
      [CtrlClass.VLAN, CtrlVlan.ADD, Uint8Array.of(5)],
      [CtrlClass.VLAN, CtrlVlan.ADD, Uint8Array.of(0x00, 0x10)],
      [CtrlClass.ANNOUNCE, CtrlAnnounce.ACK, Uint8Array.of(0)],
      [CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(0, 0)],
      [CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(3, 0)],
      [CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(1, 0, 0)],
      [CtrlClass.GUEST_OFFLOADS, CtrlGuestOffloads.SET, new Uint8Array(7)],
      [CtrlClass.GUEST_OFFLOADS, CtrlGuestOffloads.SET, Uint8Array.of(0, 0x08, 0, 0, 0, 0, 0, 0)],
      [99, 0, new Uint8Array(0)],
    ];
    for (const [cls, cmd, data] of bad) {
      assert.equal(await a.drv.rawCommand(cls, cmd, data), CtrlAck.ERR, `class ${cls} command ${cmd} with ${data.length} bytes`);
    }
    assert.equal(a.dev.traffic.drops.badCommand, bad.length);
    assert.equal(await a.drv.rawCommand(CtrlClass.GUEST_OFFLOADS, CtrlGuestOffloads.SET, Uint8Array.of(0x82, 0, 0, 0, 0, 0, 0, 0)), CtrlAck.OK);
    assert.equal(await a.drv.rawCommand(CtrlClass.ANNOUNCE, CtrlAnnounce.ACK, new Uint8Array(0)), CtrlAck.OK);
    const f = frame(MAC_A, MAC_B, 80);
    await b.drv.send(f);
    assert.deepEqual((await nextFrame(a.drv)).frame, f);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('commands for features the driver did not negotiate are refused by the device and named by the driver', async () => {
  const [port] = createCable();
  const features = NET_DRIVER_FEATURES & ~featureBit(NetFeature.CTRL_RX_EXTRA) & ~featureBit(NetFeature.CTRL_VLAN);
  const a = await station(port, { mac: MAC_A }, { features });
  try {
    assert.equal(await a.drv.rawCommand(CtrlClass.RX, CtrlRx.ALLUNI, Uint8Array.of(1)), CtrlAck.ERR);
    assert.equal(await a.drv.rawCommand(CtrlClass.VLAN, CtrlVlan.ADD, Uint8Array.of(1, 0)), CtrlAck.ERR);
    await assert.rejects(a.drv.setAllUnicast(true), /needs VIRTIO_NET_F_CTRL_RX_EXTRA, which was not negotiated/);
    await assert.rejects(a.drv.setQueuePairs(2), /needs VIRTIO_NET_F_MQ/);
  } finally {
    await a.drv.close();
  }
});

test('MRG_RXBUF: a frame spread over several small receive buffers is reassembled; offload metadata passes through', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A }, { rxBufferSize: 256 });
  const b = await station(sw.createPort(), { mac: MAC_B }, { rxBufferSize: 256 });
  try {
    assert.ok(hasFeature(b.drv.features, NetFeature.MRG_RXBUF));
    const full = frame(MAC_B, MAC_A, 1514, 4);
    await a.drv.send(full);
    assert.deepEqual((await nextFrame(b.drv)).frame, full);
    // A TSO frame far beyond the MTU, partially checksummed: carried whole, metadata intact.
    const meta: Offload = { flags: HdrFlag.NEEDS_CSUM, gsoType: GsoType.TCPV4, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 };
    const jumbo = frame(MAC_B, MAC_A, 20000, 5);
    await a.drv.send(jumbo, { meta });
    const got = await nextFrame(b.drv);
    assert.deepEqual(got.frame, jumbo);
    assert.deepEqual(got.meta, meta);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('without MRG_RXBUF each frame takes one buffer; frames beyond the MTU are dropped and counted', async () => {
  const sw = new L2Switch();
  // Without GSO either, so a buffer is the 1530 bytes of a plain frame rather than 64 KiB.
  const features = NET_DRIVER_FEATURES & ~featureBit(NetFeature.MRG_RXBUF);
  const a = await station(sw.createPort(), { mac: MAC_A }, { features, offloads: false });
  const b = await station(sw.createPort(), { mac: MAC_B, backlog: 4 }, { features, offloads: false });
  try {
    assert.equal(hasFeature(b.drv.features, NetFeature.MRG_RXBUF), false);
    const frames = Array.from({ length: 20 }, (_, i) => frame(MAC_B, MAC_A, 60 + i * 70, i));
    for (const f of frames) await a.drv.send(f);
    for (const f of frames) assert.deepEqual((await nextFrame(b.drv)).frame, f);
    const [cableDev, cableEnd] = createCable();
    const c = await station(cableDev, { mac: MAC_C });
    try {
      cableEnd.send(frame(MAC_C, MAC_A, 1600), NO_OFFLOAD);
      assert.equal(c.dev.traffic.drops.oversize, 1, 'a plain frame beyond MTU + headers is not passed to the driver');
    } finally {
      await c.drv.close();
    }
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('checksum offload: a driver with GUEST_CSUM gets the partial checksum, one without gets it completed', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A });
  const withCsum = await station(sw.createPort(), { mac: MAC_B });
  const plain = await station(sw.createPort(), { mac: MAC_C }, { offloads: false });
  try {
    const meta: Offload = { flags: HdrFlag.NEEDS_CSUM, gsoType: GsoType.NONE, hdrLen: 0, gsoSize: 0, csumStart: 34, csumOffset: 16 };
    const f = frame(BROADCAST, MAC_A, 301, 6);
    f[50] = 0x12;
    f[51] = 0x34;
    await a.drv.send(f, { meta });
    const partial = await nextFrame(withCsum.drv);
    assert.deepEqual(partial.meta, meta);
    assert.deepEqual(partial.frame, f);
    const full = await nextFrame(plain.drv);
    assert.deepEqual(full.meta, NO_OFFLOAD);
    // With the checksum in, the range plus the pseudo-header sum the field held (0x1234) sums to all ones.
    let sum = 0x1234;
    for (let i = 34; i < full.frame.length; i += 2) sum += (full.frame[i] << 8) | (full.frame[i + 1] ?? 0);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    assert.equal(sum, 0xffff);
    assert.deepEqual(full.frame.subarray(0, 50), f.subarray(0, 50));
    // GSO cannot be undone for a driver without GUEST_TSO4: dropped and counted.
    await a.drv.send(frame(MAC_C, MAC_A, 3000), { meta: { ...meta, gsoType: GsoType.TCPV4, gsoSize: 1448 } });
    assert.equal(plain.dev.traffic.drops.offloadUnsupported, 1);
    // GUEST_OFFLOADS_SET to nothing: the device now completes checksums for this driver too.
    await withCsum.drv.setGuestOffloads(0n);
    await a.drv.send(f, { meta });
    assert.deepEqual((await nextFrame(withCsum.drv)).frame, full.frame);
    assert.deepEqual((await nextFrame(plain.drv)).frame, full.frame);
  } finally {
    await a.drv.close();
    await withCsum.drv.close();
    await plain.drv.close();
  }
});

test('multiqueue: VQ_PAIRS_SET, transmit on any pair in use, replies steered to the pair the flow went out on', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A, queuePairs: 4 });
  const b = await station(sw.createPort(), { mac: MAC_B, queuePairs: 4 }, { queuePairs: 4 });
  try {
    assert.equal(a.drv.maxQueuePairs, 4);
    assert.equal(a.dev.queuePairs, 1);
    await assert.rejects(a.drv.send(frame(MAC_B, MAC_A), { pair: 2 }), /queue pair 2 is not in use/);
    await a.drv.setQueuePairs(3);
    assert.equal(a.dev.queuePairs, 3);
    assert.equal(b.dev.queuePairs, 4);
    const out = frame(MAC_B, MAC_A, 90);
    await a.drv.send(out, { pair: 2 });
    assert.deepEqual((await nextFrame(b.drv)).frame, out);
    const reply = frame(MAC_A, MAC_B, 91);
    await b.drv.send(reply, { pair: 3 });
    const got = await nextFrame(a.drv);
    assert.deepEqual(got.frame, reply);
    assert.equal(got.pair, 2, 'the reply arrives on the pair the flow was sent from');
    await assert.rejects(a.drv.setQueuePairs(5), /queue pair count 5 is not an integer from 1 to 4/);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('frames of a stream with the same transmit header share one decoded Offload; another header decodes anew', async () => {
  const [port, end] = createCable();
  const metas: Offload[] = [];
  end.onReceive((_, meta) => metas.push(meta));
  const a = await station(port, { mac: MAC_A });
  try {
    const csum: Offload = { ...NO_OFFLOAD, flags: HdrFlag.NEEDS_CSUM, csumStart: 34, csumOffset: 16 };
    const other: Offload = { ...csum, csumOffset: 6 };
    for (const meta of [csum, csum, other, csum]) await a.drv.send(frame(MAC_B, MAC_A, 100), { meta });
    assert.deepEqual(metas, [csum, csum, other, csum]);
    assert.equal(metas[0], metas[1], 'the second frame reuses the first one\'s');
    assert.equal(a.dev.traffic.txPackets, 4);
  } finally {
    await a.drv.close();
  }
});

/** A device on a cable and a bare VirtioDriver, to hand the device buffers a NetDriver would never make. */
async function rawDevice(backlog = 256, [port, end]: [NetPort, NetPort] = createCable()): Promise<{ dev: NetDevice; end: NetPort; core: VirtioDriver }> {
  const dev = new NetDevice({ port, mac: MAC_A, backlog, features: { checksum: false, mergeable: false } });
  const { transport } = createLoopback(dev, { memoryBytes: 4 << 20, log });
  const core = await VirtioDriver.start(transport, { name: 'raw-net', deviceId: DeviceId.NET, features: 0n, queues: 3, log });
  return { dev, end, core };
}

test('malformed transmit buffers are dropped and counted by reason; a good frame still goes out', async () => {
  const { dev, end, core } = await rawDevice();
  const seen: Uint8Array[] = [];
  end.onReceive((f) => seen.push(f));
  const { memory, dma } = core.transport;
  const sendRaw = async (bytes: Uint8Array): Promise<void> => {
    const addr = dma.alloc(Math.max(1, bytes.length), 16)!;
    memory.slice(addr, bytes.length).set(bytes);
    await core.queue(1).submit([{ addr, len: bytes.length }], []);
    dma.free(addr);
  };
  const withHeader = (meta: Offload, f: Uint8Array): Uint8Array => {
    const out = new Uint8Array(NET_HDR_SIZE + f.length);
    encodeNetHeader(meta, 0, out);
    out.set(f, NET_HDR_SIZE);
    return out;
  };
  try {
    await sendRaw(new Uint8Array(8));
    await sendRaw(withHeader(NO_OFFLOAD, new Uint8Array(10)));
    await sendRaw(withHeader(NO_OFFLOAD, frame(MAC_B, MAC_A, 1600)));
    await sendRaw(withHeader({ ...NO_OFFLOAD, gsoType: GsoType.TCPV4, gsoSize: 1448 }, frame(MAC_B, MAC_A, 3000)));
    await sendRaw(withHeader({ ...NO_OFFLOAD, flags: HdrFlag.NEEDS_CSUM, csumStart: 50, csumOffset: 16 }, frame(MAC_B, MAC_A, 60)));
    const good = frame(MAC_B, MAC_A, 60);
    await sendRaw(withHeader(NO_OFFLOAD, good));
    assert.deepEqual(
      { malformedBuffer: dev.traffic.drops.malformedBuffer, runt: dev.traffic.drops.runt, oversize: dev.traffic.drops.oversize, badOffload: dev.traffic.drops.badOffload },
      { malformedBuffer: 1, runt: 1, oversize: 1, badOffload: 2 },
    );
    assert.deepEqual(seen, [good]);
    assert.equal(dev.traffic.txPackets, 1);
  } finally {
    await core.close();
  }
});

test('without receive buffers frames wait in a bounded backlog, the rest are dropped; posted buffers then take them in order', async () => {
  const { dev, end, core } = await rawDevice(4);
  const { memory, dma } = core.transport;
  try {
    const frames = Array.from({ length: 6 }, (_, i) => frame(MAC_A, MAC_B, 60 + i, i));
    for (const f of frames) end.send(f, NO_OFFLOAD);
    assert.equal(dev.traffic.drops.noBuffer, 2);
    const got = await Promise.all(
      frames.slice(0, 4).map(async () => {
        const addr = dma.alloc(2048, 16)!;
        const len = await core.queue(0).submit([], [{ addr, len: 2048 }]);
        return memory.slice(addr, len).slice();
      }),
    );
    got.forEach((buf, i) => {
      assert.equal(buf[10] | (buf[11] << 8), 1, 'num_buffers is 1');
      assert.deepEqual(buf.subarray(NET_HDR_SIZE), frames[i]);
    });
  } finally {
    await core.close();
  }
});

test('offered control features follow the options; CTRL_VQ gone means no control queue', () => {
  const [port] = createCable();
  const dev = new NetDevice({ port, features: { control: false, status: false } });
  for (const bit of [NetFeature.CTRL_VQ, NetFeature.CTRL_RX, NetFeature.GUEST_ANNOUNCE, NetFeature.STATUS, NetFeature.MAC]) {
    assert.equal(hasFeature(dev.features, bit), false);
  }
  assert.equal(dev.numQueues, 2);
});

test('without VIRTIO_NET_F_MAC the driver makes up a local address and tells the device, whose filter then uses it', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort());
  const b = await station(sw.createPort(), { mac: MAC_B });
  try {
    assert.equal(hasFeature(a.drv.features, NetFeature.MAC), false);
    const mac = a.drv.mac;
    assert.equal(mac[0] & 0x03, 0x02, 'locally administered unicast');
    const mine = frame(formatMac(mac), MAC_B, 60, 1);
    await b.drv.send(frame(MAC_C, MAC_B, 60, 2));
    await b.drv.send(mine);
    assert.deepEqual((await nextFrame(a.drv)).frame, mine);
    assert.equal(a.dev.traffic.drops.filtered, 1);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('without CTRL_RX the driver cannot program a filter: multicast passes, and without an address any unicast does', async () => {
  const sw = new L2Switch();
  const features = NET_DRIVER_FEATURES & ~featureBit(NetFeature.CTRL_RX) & ~featureBit(NetFeature.CTRL_MAC_ADDR);
  const a = await station(sw.createPort(), {}, { features });
  const b = await station(sw.createPort(), { mac: MAC_B });
  try {
    const frames = [frame(MULTICAST, MAC_B, 60, 1), frame(MAC_C, MAC_B, 60, 2), frame(BROADCAST, MAC_B, 60, 3)];
    for (const f of frames) await b.drv.send(f);
    for (const f of frames) assert.deepEqual((await nextFrame(a.drv)).frame, f);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});

test('a receive buffer too small for the header breaks the receive queue: the device needs a reset', async () => {
  const { end, core } = await rawDevice();
  const { dma } = core.transport;
  try {
    end.send(frame(MAC_A, MAC_B, 60), NO_OFFLOAD);
    const tiny = dma.alloc(8, 16)!;
    await assert.rejects(core.queue(0).submit([], [{ addr: tiny, len: 8 }]), /device needs reset/);
    assert.ok((await core.transport.getStatus()) & DeviceStatus.DEVICE_NEEDS_RESET);
    assert.ok(logged.some((line) => line.includes('receive buffer too small')));
  } finally {
    await core.close();
  }
});

test('a transmit header in front of the frame, on its own, or split over descriptors: the same frame and offload out of a cable or a switch', async () => {
  const sw = new L2Switch();
  for (const ends of [createCable(), [sw.createPort(), sw.createPort()] as [NetPort, NetPort]]) {
    const { end, core } = await rawDevice(256, ends);
    const seen: [number[], Offload][] = [];
    end.onReceive((f, meta) => seen.push([[...f], meta]));
    const { memory, dma } = core.transport;
    const meta: Offload = { ...NO_OFFLOAD, hdrLen: 54 };
    const bytes = new Uint8Array(NET_HDR_SIZE + 60);
    encodeNetHeader(meta, 0, bytes);
    const f = frame(MAC_B, MAC_A, 60);
    bytes.set(f, NET_HDR_SIZE);
    const addr = dma.alloc(bytes.length, 16)!;
    memory.slice(addr, bytes.length).set(bytes);
    try {
      // Whole; header then frame; the header split in two; the frame split in two.
      for (const cuts of [[], [NET_HDR_SIZE], [5, NET_HDR_SIZE], [NET_HDR_SIZE, 40]]) {
        const edges = [0, ...cuts, bytes.length];
        await core.queue(1).submit(edges.slice(1).map((to, i) => ({ addr: addr + edges[i], len: to - edges[i] })), []);
      }
      assert.equal(seen.length, 4);
      for (const [got, gotMeta] of seen) {
        assert.deepEqual(got, [...f]);
        assert.deepEqual(gotMeta, meta);
      }
    } finally {
      dma.free(addr);
      await core.close();
    }
  }
});
