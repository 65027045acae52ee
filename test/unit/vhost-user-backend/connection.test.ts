/**
 * A back-end session driven over a socketpair by a hand-written front-end: the handshake, a
 * request served end to end through shared memory and eventfds, and every kind of bad message
 * a hostile front-end can send. After each bad message the session either answers with an
 * error acknowledgement and keeps serving, or closes; either way no descriptor leaks.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { readdirSync, readlinkSync } from 'node:fs';
import { pino } from 'pino';
import { EventFd } from '../../../src/native/eventfd.ts';
import { closeFd } from '../../../src/native/fd.ts';
import { Mapping } from '../../../src/native/mapping.ts';
import { createMemfd } from '../../../src/native/memfd.ts';
import { whenReadable } from '../../../src/native/readiness.ts';
import { socketPair, type UnixSocket } from '../../../src/native/unix-socket.ts';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { vhostUserBlkDevice } from '../../../src/devices/blk/device.ts';
import type { VirtioDevice } from '../../../src/virtio/device.ts';
import { DeviceStatus, Feature, featureBit } from '../../../src/virtio/constants.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import { createDriverQueue } from '../../../src/virtio/ring.ts';
import type { DriverQueue } from '../../../src/virtio/queue.ts';
import { BackendConnection } from '../../../src/transports/vhost-user/backend-connection.ts';
import {
  BackendRequest,
  FrontendRequest as F,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
} from '../../../src/transports/vhost-user/constants.ts';
import { encodeMessage, type FrontendReplyMessage, type Payload } from '../../../src/transports/vhost-user/messages.ts';
import { MessageReader } from '../../../src/transports/vhost-user/reader.ts';

const RAM_SIZE = 0x40000;
const USER_BASE = 0x7f12_0000_0000n;

/** Descriptors this process holds: a session must give back every one it was handed. */
const openFds = (): number => readdirSync('/proc/self/fd').length;

class FrontEnd {
  private readonly reader = new MessageReader('frontend-replies');
  readonly connection: BackendConnection;

  constructor(
    readonly socket: UnixSocket,
    backSocket: UnixSocket,
    device: VirtioDevice = new RngDevice(),
  ) {
    this.connection = new BackendConnection(backSocket, device, pino({ level: process.env.PARAVIRT_LOG ?? 'silent' }));
  }

  send(request: number, payload: Payload = { kind: 'empty' }, fds: readonly number[] = [], needReply = false): void {
    const { bytes } = encodeMessage('frontend-requests', { request, payload, fds, needReply });
    this.raw(bytes, fds);
  }

  raw(bytes: Uint8Array, fds: readonly number[] = []): void {
    assert.equal(this.socket.send(bytes, fds), bytes.length);
  }

  /** The next reply, or null when the back-end closed the connection. */
  async reply(): Promise<FrontendReplyMessage | null> {
    for (;;) {
      const next = this.reader.next();
      if (next.type === 'message') return next.message;
      if (next.type === 'error') throw next.error;
      const got = this.socket.receive();
      if (got === null) {
        await whenReadable(this.socket.fd);
        continue;
      }
      if (got.bytes.length === 0) return null;
      this.reader.push(got.bytes, got.fds);
    }
  }

  async u64(request: number): Promise<bigint> {
    this.send(request);
    const r = await this.reply();
    assert.ok(r !== null && r.payload.kind === 'u64', `a u64 reply to request ${request}`);
    return r.payload.value;
  }

  /** Send with NEED_REPLY and return the acknowledgement value (0 success). */
  async acked(request: number, payload: Payload = { kind: 'empty' }, fds: readonly number[] = []): Promise<bigint> {
    this.send(request, payload, fds, true);
    const r = await this.reply();
    assert.ok(r !== null && r.request === request && r.payload.kind === 'u64', `an ack for request ${request}`);
    return r.payload.value;
  }

  /** Negotiate like QEMU: protocol features with REPLY_ACK, then the owner. */
  async handshake(protocol = featureBit(ProtocolFeature.REPLY_ACK)): Promise<void> {
    assert.ok((await this.u64(F.GET_FEATURES)) & featureBit(VHOST_USER_F_PROTOCOL_FEATURES));
    this.send(F.SET_PROTOCOL_FEATURES, { kind: 'u64', value: protocol });
    assert.equal(await this.acked(F.SET_OWNER), 0n);
  }

  async closed(): Promise<void> {
    assert.equal(await this.reply(), null, 'the back-end closed the connection');
    await this.connection.ended;
  }
}

function session(t: TestContext, device?: VirtioDevice): FrontEnd {
  const [front, back] = socketPair();
  const fe = new FrontEnd(front, back, device);
  t.after(async () => {
    front.close();
    await fe.connection.ended;
  });
  return fe;
}


interface Ring {
  ram: Mapping;
  ramFd: number;
  driver: DriverQueue<string>;
  kick: EventFd;
  call: EventFd;
}

/** Share a memfd as guest RAM and start ring 0 of 8 entries in it, the way QEMU does. */
async function startRing(t: TestContext, fe: FrontEnd, err?: EventFd): Promise<Ring> {
  const ramFd = createMemfd('guest-ram', RAM_SIZE);
  const ram = Mapping.shared(ramFd, RAM_SIZE);
  t.after(() => ram.unmap());
  const memory = new GuestMemory([{ guestAddr: 0, bytes: ram.bytes }]);
  const ring = { desc: 0x1000, driver: 0x2000, device: 0x3000 };
  const driver = createDriverQueue<string>(memory, { ...ring, size: 8, eventIdx: false, indirect: false, inOrder: false }, false, 'drv');
  const kick = EventFd.create();
  const call = EventFd.create();

  fe.send(F.SET_FEATURES, { kind: 'u64', value: featureBit(Feature.VERSION_1) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES) });
  const region = { guestAddr: 0n, size: BigInt(RAM_SIZE), userAddr: USER_BASE, mmapOffset: 0n };
  assert.equal(await fe.acked(F.SET_MEM_TABLE, { kind: 'memory-table', regions: [region] }, [ramFd]), 0n);
  fe.send(F.SET_VRING_NUM, { kind: 'vring-state', index: 0, num: 8 });
  fe.send(F.SET_VRING_BASE, { kind: 'vring-state', index: 0, num: 0 });
  const user = (gpa: number): bigint => USER_BASE + BigInt(gpa);
  fe.send(F.SET_VRING_ADDR, {
    kind: 'vring-address',
    index: 0,
    flags: 0,
    descUser: user(ring.desc),
    availUser: user(ring.driver),
    usedUser: user(ring.device),
    logGuest: 0n,
  });
  fe.send(F.SET_VRING_CALL, { kind: 'u64', value: 0n }, [call.fd]);
  if (err !== undefined) fe.send(F.SET_VRING_ERR, { kind: 'u64', value: 0n }, [err.fd]);
  fe.send(F.SET_VRING_KICK, { kind: 'u64', value: 0n }, [kick.fd]);
  assert.equal(await fe.acked(F.SET_VRING_ENABLE, { kind: 'vring-state', index: 0, num: 1 }), 0n);
  return { ram, ramFd, driver, kick, call };
}

test('handshake: features with bit 30, protocol features, queue count and slots', async (t) => {
  const fe = session(t);
  const features = await fe.u64(F.GET_FEATURES);
  assert.ok(features & featureBit(Feature.VERSION_1));
  assert.ok(features & featureBit(VHOST_USER_F_PROTOCOL_FEATURES));
  const protocol = await fe.u64(F.GET_PROTOCOL_FEATURES);
  for (const bit of [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.STATUS]) {
    assert.ok(protocol & featureBit(bit), `protocol feature ${bit} offered`);
  }
  assert.equal(protocol & featureBit(ProtocolFeature.CONFIG), 0n, 'rng has no configuration space to offer');
  await fe.handshake(protocol);
  assert.equal(await fe.u64(F.GET_QUEUE_NUM), 1n);
  assert.equal(await fe.u64(F.GET_MAX_MEM_SLOTS), 509n);
});

test('a request goes from the driver ring through the back-end and back, with kick and call eventfds', async (t) => {
  const before = openFds();
  const fe = session(t);
  await fe.handshake();
  const { ram, driver, kick, call, ramFd } = await startRing(t, fe);
  driver.add([], [{ addr: 0x8000, len: 32 }], 'buffer');
  driver.kick();
  kick.signal();
  await whenReadable(call.fd);
  assert.equal(call.take(), 1n);
  const used = driver.getUsed();
  assert.equal(used?.token, 'buffer');
  assert.equal(used?.len, 32);
  assert.ok(ram.bytes.subarray(0x8000, 0x8020).some((b) => b !== 0), 'random bytes were written');

  fe.send(F.GET_VRING_BASE, { kind: 'vring-state', index: 0, num: 0 });
  const base = await fe.reply();
  assert.deepEqual(base?.payload, { kind: 'vring-state', index: 0, num: 1 });
  fe.socket.close();
  await fe.connection.ended;
  for (const e of [kick, call]) e.close();
  closeFd(ramFd);
  assert.equal(openFds(), before, 'every descriptor sent to the back-end was closed');
});

test('refused requests with NEED_REPLY get a non-zero ack and the session goes on', async (t) => {
  const fe = session(t);
  await fe.handshake();
  const refused: [number, Payload][] = [
    [F.SET_FEATURES, { kind: 'u64', value: 1n << 63n }],
    [F.SET_PROTOCOL_FEATURES, { kind: 'u64', value: 1n << 40n }],
    [F.SET_VRING_NUM, { kind: 'vring-state', index: 1, num: 8 }],
    [F.SET_VRING_NUM, { kind: 'vring-state', index: 0xffff_ffff, num: 8 }],
    [F.SET_VRING_NUM, { kind: 'vring-state', index: 0, num: 0 }],
    [F.SET_VRING_NUM, { kind: 'vring-state', index: 0, num: 0x10000 }],
    [F.SET_VRING_BASE, { kind: 'vring-state', index: 3, num: 0 }],
    [F.SET_VRING_ENABLE, { kind: 'vring-state', index: 0, num: 7 }],
    [F.SET_VRING_ADDR, { kind: 'vring-address', index: 0, flags: 1, descUser: 0n, availUser: 0n, usedUser: 0n, logGuest: 0n }],
    // Without the protocol features they belong to:
    [F.SET_STATUS, { kind: 'u64', value: 1n }],
    [F.GET_MAX_MEM_SLOTS, { kind: 'empty' }],
    [F.RESET_DEVICE, { kind: 'empty' }],
    [F.SET_CONFIG, { kind: 'config', offset: 0, flags: 0, data: new Uint8Array(4) }],
    // Features this back-end does not offer at all:
    [F.SET_LOG_BASE, { kind: 'u64', value: 0n }],
    [F.SEND_RARP, { kind: 'u64', value: 0n }],
    [F.SET_VRING_ENDIAN, { kind: 'vring-state', index: 0, num: 0 }],
    [F.VRING_KICK, { kind: 'vring-state', index: 0, num: 0 }],
    [F.POSTCOPY_LISTEN, { kind: 'empty' }],
  ];
  for (const [request, payload] of refused) {
    assert.notEqual(await fe.acked(request, payload), 0n, `request ${request} ${JSON.stringify(payload, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))} is refused`);
  }
  assert.equal(await fe.u64(F.GET_QUEUE_NUM), 1n, 'the session still serves');
});

test('refused requests that carry descriptors close them', async (t) => {
  const before = openFds();
  const fe = session(t);
  await fe.handshake(featureBit(ProtocolFeature.REPLY_ACK) | featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS));
  const e = EventFd.create();
  // Ring 5 does not exist; a ring index in bits 0-7 with the fd present.
  assert.notEqual(await fe.acked(F.SET_VRING_CALL, { kind: 'u64', value: 5n }, [e.fd]), 0n);
  assert.notEqual(await fe.acked(F.SET_VRING_KICK, { kind: 'u64', value: 0n }, [e.fd]), 0n, 'a ring without memory cannot start');
  assert.notEqual(await fe.acked(F.SET_LOG_FD, { kind: 'empty' }, [e.fd]), 0n);
  // A region larger than its file would fault (SIGBUS) on access: refused before mapping.
  const small = createMemfd('small', 0x1000);
  const region = { guestAddr: 0n, size: 0x10000n, userAddr: USER_BASE, mmapOffset: 0n };
  assert.notEqual(await fe.acked(F.ADD_MEM_REG, { kind: 'memory-region', region }, [small]), 0n);
  // An eventfd is no memory.
  assert.notEqual(await fe.acked(F.ADD_MEM_REG, { kind: 'memory-region', region }, [e.fd]), 0n);
  fe.socket.close();
  await fe.connection.ended;
  e.close();
  closeFd(small);
  assert.equal(openFds(), before);
});

test('memory tables with regions overlapping in either address space are refused', async (t) => {
  const fe = session(t);
  await fe.handshake();
  const fd = createMemfd('ram', 0x20000);
  t.after(() => closeFd(fd));
  const region = (guestAddr: bigint, userAddr: bigint) => ({ guestAddr, size: 0x10000n, userAddr, mmapOffset: 0n });
  assert.equal(await fe.acked(F.SET_MEM_TABLE, { kind: 'memory-table', regions: [region(0n, USER_BASE)] }, [fd]), 0n);
  const overlapping = { kind: 'memory-table', regions: [region(0n, USER_BASE), region(0x8000n, USER_BASE + 0x100000n)] } as const;
  assert.notEqual(await fe.acked(F.SET_MEM_TABLE, overlapping, [fd, fd]), 0n);
  const userOverlap = { kind: 'memory-table', regions: [region(0n, USER_BASE), region(0x100000n, USER_BASE + 0x8000n)] } as const;
  assert.notEqual(await fe.acked(F.SET_MEM_TABLE, userOverlap, [fd, fd]), 0n);
  assert.equal(await fe.u64(F.GET_QUEUE_NUM), 1n, 'still serving');
});

test('a refused request without NEED_REPLY closes the connection: the front-end would believe it succeeded', async (t) => {
  const fe = session(t);
  await fe.handshake();
  fe.send(F.SET_VRING_NUM, { kind: 'vring-state', index: 9, num: 8 });
  await fe.closed();
});

test('GET_CONFIG that cannot be answered gets an empty payload, the protocol error answer', async (t) => {
  const fe = session(t);
  await fe.handshake();
  // rng has no configuration space, so CONFIG was never negotiated.
  fe.send(F.GET_CONFIG, { kind: 'config', offset: 0, flags: 0, data: new Uint8Array(8) });
  const r = await fe.reply();
  assert.deepEqual(r?.payload, { kind: 'empty' });
  assert.equal(await fe.u64(F.GET_QUEUE_NUM), 1n, 'still serving');
});

test('malformed messages: codec refusals with NEED_REPLY are acked, framing errors close', async (t) => {
  const fe = session(t);
  await fe.handshake();
  const header = (request: number, flags: number, size: number): Uint8Array => {
    const b = new Uint8Array(12 + size);
    const v = new DataView(b.buffer);
    v.setUint32(0, request, true);
    v.setUint32(4, flags, true);
    v.setUint32(8, size, true);
    return b;
  };
  // An unknown request type, asking for a reply: a non-zero ack (read raw: no codec knows the type).
  fe.raw(header(999, 0x1 | 0x8, 0));
  await whenReadable(fe.socket.fd);
  const ack = fe.socket.receive();
  assert.ok(ack !== null);
  const view = new DataView(ack.bytes.buffer, ack.bytes.byteOffset, ack.bytes.length);
  assert.deepEqual([ack.bytes.length, view.getUint32(0, true), view.getUint32(4, true), view.getUint32(8, true)], [20, 999, 0x5, 8]);
  assert.notEqual(view.getBigUint64(12, true), 0n);
  // SET_FEATURES with a 4-byte payload instead of 8.
  fe.raw(header(F.SET_FEATURES, 0x1 | 0x8, 4));
  let r = await fe.reply();
  assert.notEqual(r?.payload.kind === 'u64' ? r.payload.value : 0n, 0n);
  // SET_VRING_CALL with reserved bits above the no-fd flag.
  const call = header(F.SET_VRING_CALL, 0x1 | 0x8, 8);
  new DataView(call.buffer).setBigUint64(12, 0x1_0000_0100n, true);
  fe.raw(call);
  r = await fe.reply();
  assert.notEqual(r?.payload.kind === 'u64' ? r.payload.value : 0n, 0n);
  assert.equal(await fe.u64(F.GET_QUEUE_NUM), 1n, 'still serving');
  // Protocol version 2: the stream cannot be trusted any more.
  fe.raw(header(F.GET_FEATURES, 0x2, 0));
  await fe.closed();
});

test('a payload larger than any message closes the connection before it is buffered', async (t) => {
  const fe = session(t);
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint32(0, F.SET_MEM_TABLE, true);
  v.setUint32(4, 0x1, true);
  v.setUint32(8, 0xffff_ffff, true);
  fe.raw(b);
  await fe.closed();
});

test('the session ends when the front-end goes away', async (t) => {
  const fe = session(t);
  await fe.handshake();
  fe.socket.close();
  await fe.connection.ended;
});

test('property: arbitrary messages with valid headers never escape the session', async () => {
  const property = fc.asyncProperty(
    fc.array(
      fc.record({
        request: fc.oneof(fc.integer({ min: 0, max: 45 }), fc.integer({ min: 0, max: 0xffff_ffff })),
        flags: fc.constantFrom(0x1, 0x9, 0x5, 0xd, 0x11),
        payload: fc.uint8Array({ maxLength: 80 }),
        withFd: fc.boolean(),
      }),
      { maxLength: 12 },
    ),
    async (messages) => {
      const [front, back] = socketPair();
      const fe = new FrontEnd(front, back);
      const fds: number[] = [];
      for (const m of messages) {
        const b = new Uint8Array(12 + m.payload.length);
        const v = new DataView(b.buffer);
        v.setUint32(0, m.request, true);
        v.setUint32(4, m.flags, true);
        v.setUint32(8, m.payload.length, true);
        b.set(m.payload, 12);
        const fd = m.withFd ? createMemfd('fuzz', 0x1000) : undefined;
        if (fd !== undefined) fds.push(fd);
        // The back-end may have closed already; a send to a closed peer is the expected end.
        try {
          front.send(b, fd === undefined ? [] : [fd]);
        } catch {
          break;
        }
      }
      front.close();
      await fe.connection.ended;
      for (const fd of fds) closeFd(fd);
    },
  );
  // One session first: descriptors the process opens once and keeps (readiness's epoll probe,
  // libuv's) are then counted in `before`, whichever test of this file runs first.
  await fc.assert(property, { numRuns: 1, examples: [[[{ request: 1, flags: 0x1, payload: new Uint8Array(0), withFd: true }]]] });
  const before = openFds();
  await fc.assert(property, { numRuns: 60 });
  assert.equal(openFds(), before, 'no descriptor leaked');
});

test('a guest driver breaking a ring rule: the error eventfd, DEVICE_NEEDS_RESET and a configuration change reach the front-end', async (t) => {
  const fe = session(t, vhostUserBlkDevice(new MemoryBackend(1024 * 1024), { queueSize: 8 }));
  const protocol = [ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.BACKEND_REQ, ProtocolFeature.STATUS];
  await fe.handshake(protocol.reduce((m, b) => m | featureBit(b), 0n));
  const [channel, backendEnd] = socketPair();
  t.after(() => channel.close());
  assert.equal(await fe.acked(F.SET_BACKEND_REQ_FD, { kind: 'empty' }, [backendEnd.fd]), 0n);
  backendEnd.close();
  const err = EventFd.create();
  t.after(() => err.close());
  const { ram, kick, ramFd } = await startRing(t, fe, err);
  t.after(() => closeFd(ramFd));
  // The driver publishes avail idx 200 on a ring of 8 entries: more buffers than the ring holds.
  new DataView(ram.bytes.buffer, ram.bytes.byteOffset + 0x2000).setUint16(2, 200, true);
  kick.signal();
  await whenReadable(err.fd);
  assert.equal(err.take(), 1n);
  await whenReadable(channel.fd);
  const message = channel.receive();
  assert.ok(message !== null);
  const header = new DataView(message.bytes.buffer, message.bytes.byteOffset, 12);
  assert.deepEqual([header.getUint32(0, true), header.getUint32(8, true)], [BackendRequest.CONFIG_CHANGE_MSG, 0]);
  const status = await fe.u64(F.GET_STATUS);
  assert.equal(status & BigInt(DeviceStatus.DEVICE_NEEDS_RESET), BigInt(DeviceStatus.DEVICE_NEEDS_RESET));
  assert.equal(await fe.u64(F.GET_QUEUE_NUM), 1n, 'the session goes on');
});

test('a region larger than 4 GiB is accepted and mapped in pieces instead of aborting the process', async (t) => {
  const fe = session(t);
  await fe.handshake();
  const size = 5 * 1024 * 1024 * 1024;
  // Sparse: no page of it is ever touched.
  const fd = createMemfd('big-ram', size);
  t.after(() => closeFd(fd));
  const region = { guestAddr: 0x1_0000_0000n, size: BigInt(size), userAddr: USER_BASE, mmapOffset: 0n };
  assert.equal(await fe.acked(F.SET_MEM_TABLE, { kind: 'memory-table', regions: [region] }, [fd]), 0n);
  assert.equal(await fe.u64(F.GET_QUEUE_NUM), 1n);
});

/** Descriptors this process holds on inflight regions (memfds the back-end names "...-inflight"). */
const inflightFds = (): string[] =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).includes('-inflight');
    } catch {
      return false; // the directory's own descriptor, gone by now
    }
  });

test('GET_INFLIGHT_FD answers with a zeroed shared file of the announced size; SET_INFLIGHT_FD takes it back', async (t) => {
  const fe = session(t, vhostUserBlkDevice(new MemoryBackend(0x10000), { queues: 2 }));
  await fe.handshake(featureBit(ProtocolFeature.REPLY_ACK) | featureBit(ProtocolFeature.INFLIGHT_SHMFD));
  const ask: Payload = { kind: 'inflight', mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: 128 };
  fe.send(F.GET_INFLIGHT_FD, ask);
  const r = await fe.reply();
  assert.ok(r !== null && r.payload.kind === 'inflight');
  assert.equal(r.fds.length, 1);
  const { mmapSize, mmapOffset, numQueues, queueSize } = r.payload;
  assert.deepEqual({ mmapSize, mmapOffset, numQueues, queueSize }, { mmapSize: 4224n, mmapOffset: 0n, numQueues: 2, queueSize: 128 });
  const mapping = Mapping.shared(r.fds[0], Number(mmapSize));
  assert.ok(mapping.bytes.every((b) => b === 0));
  mapping.unmap();
  assert.equal(await fe.acked(F.SET_INFLIGHT_FD, r.payload, [r.fds[0]]), 0n);
  // A region claiming more than its file holds is refused, and its descriptor closed.
  const tooBig: Payload = { ...r.payload, mmapSize: 16384n, numQueues: 2, queueSize: 256 };
  assert.notEqual(await fe.acked(F.SET_INFLIGHT_FD, tooBig, [r.fds[0]]), 0n);
  closeFd(r.fds[0]);
  fe.socket.close();
  await fe.connection.ended;
  assert.deepEqual(inflightFds(), [], 'the back-end kept no descriptor of the region');
});
