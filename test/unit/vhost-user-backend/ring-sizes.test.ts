/**
 * The front-end picks the ring size (QEMU's queue-size, up to 1024; libblkio asks for 256): the
 * devices with their default options, as `paravirt serve` builds them, accept each of them on
 * split and packed rings and serve requests on them over a real vhost-user socket. A packed ring
 * of 1024 also carries the longest chain it can hold, every descriptor of the ring in one request.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { vhostUserBlkDevice } from '../../../src/devices/blk/device.ts';
import { BlkDriver } from '../../../src/devices/blk/driver.ts';
import { BlkStatus, REQUEST_HEADER_SIZE, RequestType, SECTOR_SIZE, encodeRequestHeader } from '../../../src/devices/blk/wire.ts';
import { NetDevice } from '../../../src/devices/net/device.ts';
import { NetDriver } from '../../../src/devices/net/driver.ts';
import { createCable } from '../../../src/devices/net/port.ts';
import { RngDevice } from '../../../src/devices/rng/device.ts';
import { RngDriver } from '../../../src/devices/rng/driver.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { VhostUserFrontend } from '../../../src/transports/vhost-user/frontend.ts';
import { DeviceId, Feature, featureBit } from '../../../src/virtio/constants.ts';
import type { VirtioDevice } from '../../../src/virtio/device.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import type { Segment } from '../../../src/virtio/queue.ts';
import { MAC_A, MAC_B, frame, nextFrame } from '../net/fixture.ts';
import { serveOnSocket } from './serve-on-socket.ts';

const log = pino({ level: 'silent' });
const SIZES = [256, 512, 1024];

const serve = (t: TestContext, device: VirtioDevice): string => serveOnSocket(t, device, log).path;

/** A front-end that sets up rings of `queueSize` entries, as QEMU does with queue-size. */
const connect = (path: string, deviceId: number, queueSize: number): Promise<VhostUserFrontend> =>
  VhostUserFrontend.connect(path, { deviceId, log, memorySize: 32 << 20, queueSize });

const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

for (const packed of [false, true]) {
  for (const size of SIZES) {
    const ring = `${packed ? 'packed' : 'split'} rings of ${size}`;

    test(`blk on ${ring}: twice as many writes in flight as the ring holds, all read back`, async (t) => {
      const block = 4096;
      const count = 2 * size;
      const path = serve(t, vhostUserBlkDevice(new MemoryBackend(count * block)));
      const blk = await BlkDriver.open(await connect(path, DeviceId.BLOCK, size), { log, packed, queueSize: size });
      try {
        const data = pattern(count * block, size);
        const sectors = block / SECTOR_SIZE;
        await Promise.all(Array.from({ length: count }, (_, i) => blk.write(i * sectors, data.subarray(i * block, (i + 1) * block))));
        assert.deepEqual(await blk.read(0, data.length), data);
      } finally {
        await blk.close();
      }
    });

    test(`rng on ${ring}: more reads in flight than the ring holds, each filled`, async (t) => {
      const path = serve(t, new RngDevice());
      const rng = await RngDriver.open(await connect(path, DeviceId.RNG, size), { log, packed, queueSize: size, chunkBytes: 64 });
      try {
        const reads = await Promise.all(Array.from({ length: size + 1 }, () => rng.read(64)));
        for (const bytes of reads) assert.equal(bytes.length, 64);
        assert.ok(reads.some((bytes) => bytes.some((b) => b !== 0)), 'random bytes, not a zeroed buffer');
      } finally {
        await rng.close();
      }
    });

    test(`net on ${ring}: frames cross between two devices on one cable, in both directions`, async (t) => {
      const [portA, portB] = createCable();
      const pathA = serve(t, new NetDevice({ port: portA, mac: MAC_A }));
      const pathB = serve(t, new NetDevice({ port: portB, mac: MAC_B }));
      const a = await NetDriver.open(await connect(pathA, DeviceId.NET, size), { log, packed, queueSize: size });
      const b = await NetDriver.open(await connect(pathB, DeviceId.NET, size), { log, packed, queueSize: size });
      try {
        // A full ring's worth of frames each way, one at a time: receive buffers are recycled
        // through every slot of the ring.
        for (let i = 0; i < size; i++) {
          const ab = frame(MAC_B, MAC_A, 60 + (i % 1400), i);
          await a.send(ab);
          assert.deepEqual((await nextFrame(b)).frame, ab);
          const ba = frame(MAC_A, MAC_B, 60 + (i % 700), i + 1);
          await b.send(ba);
          assert.deepEqual((await nextFrame(a)).frame, ba);
        }
      } finally {
        await a.close();
        await b.close();
      }
    });
  }
}

test('blk on a packed ring of 1024: a request of 1024 direct descriptors, the whole ring, is served', async (t) => {
  const size = 1024;
  const path = serve(t, vhostUserBlkDevice(new MemoryBackend(1 << 20)));
  const frontend = await connect(path, DeviceId.BLOCK, size);
  // Direct descriptors only (no indirect table), so the chain takes every slot of the ring.
  const core = await VirtioDriver.start(frontend, { name: 'blk', deviceId: DeviceId.BLOCK, features: featureBit(Feature.RING_PACKED), queues: 1, queueSize: size, log });
  try {
    const q = core.queue(0);
    assert.equal(q.size, size);
    const { dma, memory } = frontend;
    const alloc = (len: number): Segment => {
      const addr = dma.alloc(len, 16);
      assert.ok(addr !== undefined);
      return { addr, len };
    };
    const dataSegments = size - 2; // header and status take the other two
    const header = (type: number): Segment => {
      const seg = alloc(REQUEST_HEADER_SIZE);
      memory.slice(seg.addr, seg.len).set(encodeRequestHeader({ type, reserved: 0, sector: 8 }));
      return seg;
    };
    const status = alloc(1);
    const data = pattern(dataSegments * SECTOR_SIZE, 7);

    const out = Array.from({ length: dataSegments }, (_, i) => {
      const seg = alloc(SECTOR_SIZE);
      memory.slice(seg.addr, seg.len).set(data.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE));
      return seg;
    });
    assert.equal(await q.submit([header(RequestType.OUT), ...out], [status]), 1);
    assert.equal(memory.slice(status.addr, 1)[0], BlkStatus.OK);

    const into = Array.from({ length: dataSegments }, () => alloc(SECTOR_SIZE));
    assert.equal(await q.submit([header(RequestType.IN)], [...into, status]), data.length + 1);
    assert.equal(memory.slice(status.addr, 1)[0], BlkStatus.OK);
    const read = Uint8Array.from(into.flatMap((seg) => [...memory.slice(seg.addr, seg.len)]));
    assert.deepEqual(read, data);
  } finally {
    await core.close();
  }
});
