import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { NetDevice } from '../../../src/devices/net/device.ts';
import { NetDriver } from '../../../src/devices/net/driver.ts';
import { createCable } from '../../../src/devices/net/port.ts';
import { CtrlAck, CtrlClass, CtrlRx, NET_HDR_SIZE, NO_OFFLOAD, NetFeature } from '../../../src/devices/net/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceId, Feature, featureBit } from '../../../src/virtio/constants.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { MAC_A, MAC_B, frame, log, nextFrame } from './fixture.ts';

const TX_DROPS = ['malformedBuffer', 'runt', 'oversize', 'badOffload', 'linkDown'] as const;

test('MRG_RXBUF, split or packed, in order or not: frames spread over receive buffers of any sizes: every buffer but the last filled, num_buffers right, bytes intact', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.boolean(),
      fc.boolean(),
      fc.array(fc.integer({ min: 14, max: 1514 }), { minLength: 1, maxLength: 12 }),
      fc.array(fc.integer({ min: NET_HDR_SIZE, max: 700 }), { minLength: 1, maxLength: 64 }),
      async (packed, inOrder, lengths, sizes) => {
        const [port, end] = createCable();
        const dev = new NetDevice({ port, mac: MAC_A, backlog: 16, features: { inOrder } });
        const { transport } = createLoopback(dev, { memoryBytes: 1 << 20, log });
        const features =
          featureBit(NetFeature.MRG_RXBUF) | (packed ? featureBit(Feature.RING_PACKED) : 0n) | (inOrder ? featureBit(Feature.IN_ORDER) : 0n);
        const core = await VirtioDriver.start(transport, { name: 'raw-net', deviceId: DeviceId.NET, features, queues: 3, queueSize: 64, log });
        try {
          const frames = lengths.map((n, i) => frame(MAC_A, MAC_B, n, i));
          for (const f of frames) end.send(f, NO_OFFLOAD);
          // Which buffers each frame takes, device-side rule: in order, until header and frame fit.
          const plan: number[][] = [];
          let next = 0;
          for (const f of frames) {
            const taken: number[] = [];
            let room = 0;
            while (room < NET_HDR_SIZE + f.length && next < sizes.length) {
              room += sizes[next];
              taken.push(next++);
            }
            if (room < NET_HDR_SIZE + f.length) break;
            plan.push(taken);
          }
          const { dma, memory } = core.transport;
          const addrs = sizes.map((n) => dma.alloc(n, 16)!);
          const used = addrs.map((addr, i) => core.queue(0).submit([], [{ addr, len: sizes[i] }]));
          const usedCount = plan.reduce((n, t) => n + t.length, 0);
          // Buffers no frame needed stay with the device until the reset fails them.
          for (const p of used.slice(usedCount)) p.catch(() => {});
          const lens = await Promise.all(used.slice(0, usedCount));
          plan.forEach((taken, k) => {
            const first = memory.slice(addrs[taken[0]], NET_HDR_SIZE);
            assert.equal(first[10] | (first[11] << 8), taken.length, 'num_buffers');
            const parts = taken.map((i, j) => {
              if (j < taken.length - 1) assert.equal(lens[i], sizes[i], 'every buffer but the last is filled');
              const bytes = memory.slice(addrs[i], lens[i]);
              return j === 0 ? bytes.subarray(NET_HDR_SIZE) : bytes;
            });
            assert.deepEqual(Uint8Array.from(parts.flatMap((p) => [...p])), frames[k]);
          });
          assert.equal(dev.traffic.rxPackets, plan.length);
        } finally {
          await core.close();
        }
      },
    ),
    { numRuns: 30 },
  );
});

test('hostile transmit buffers and control commands: each is sent or dropped exactly once, answered OK or ERR, and the device keeps going', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.uint8Array({ minLength: 0, maxLength: 1800 }), { maxLength: 12 }),
      fc.array(fc.record({ cls: fc.integer({ min: 0, max: 6 }), cmd: fc.integer({ min: 0, max: 6 }), data: fc.uint8Array({ maxLength: 20 }) }), { maxLength: 12 }),
      async (buffers, commands) => {
        const [port, end] = createCable();
        const sent: Uint8Array[] = [];
        end.onReceive((f) => sent.push(f));
        const dev = new NetDevice({ port, mac: MAC_A, queuePairs: 2 });
        const { transport } = createLoopback(dev, { memoryBytes: 2 << 20, log });
        const drv = await NetDriver.open(transport, { queueSize: 32 });
        try {
          const { dma, memory } = transport;
          for (const b of buffers) {
            const addr = dma.alloc(Math.max(1, b.length), 16)!;
            memory.slice(addr, b.length).set(b);
            // The driver's own transmit queue, fed raw bytes instead of header + frame.
            await drv.core.queue(1).submit([{ addr, len: Math.max(1, b.length) }], []);
            dma.free(addr);
          }
          const drops = TX_DROPS.reduce((n, r) => n + dev.traffic.drops[r], 0);
          assert.equal(dev.traffic.txPackets + drops, buffers.length);
          assert.equal(sent.length, dev.traffic.txPackets);
          let errors = 0;
          for (const c of commands) {
            const ack = await drv.rawCommand(c.cls, c.cmd, c.data);
            assert.ok(ack === CtrlAck.OK || ack === CtrlAck.ERR, `ack ${ack}`);
            if (ack === CtrlAck.ERR) errors++;
          }
          assert.equal(dev.traffic.drops.badCommand, errors);
          // Still working: a clean state accepts a frame for the driver and a good command.
          assert.equal(await drv.rawCommand(CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(1)), CtrlAck.OK);
          const f = frame(MAC_A, MAC_B, 100);
          end.send(f, NO_OFFLOAD);
          for (;;) {
            const got = await nextFrame(drv);
            if (got.frame.length === f.length) {
              assert.deepEqual(got.frame, f);
              break;
            }
          }
        } finally {
          await drv.close();
        }
      },
    ),
    { numRuns: 25 },
  );
});

test('a reset forgets waiting frames and held buffers; a new driver on the same transport starts clean', async () => {
  const [port, end] = createCable();
  const dev = new NetDevice({ port, mac: MAC_A });
  const { transport } = createLoopback(dev, { memoryBytes: 8 << 20, log });
  const first = await NetDriver.open(transport);
  await first.setPromiscuous(true);
  await first.close();
  end.send(frame(MAC_A, MAC_B, 60, 1), NO_OFFLOAD);
  assert.equal(dev.traffic.drops.linkDown, 1, 'no driver running: dropped, not queued');
  const second = await NetDriver.open(transport);
  try {
    end.send(frame('52:54:00:00:00:0c', MAC_B, 60, 2), NO_OFFLOAD);
    assert.equal(dev.traffic.drops.filtered, 1, 'promiscuous mode did not survive the reset');
    const f = frame(MAC_A, MAC_B, 60, 3);
    end.send(f, NO_OFFLOAD);
    assert.deepEqual((await nextFrame(second)).frame, f);
  } finally {
    await second.close();
  }
});
