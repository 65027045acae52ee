import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { NetPort } from '../../../src/devices/net/port.ts';
import { L2Switch } from '../../../src/devices/net/switch.ts';
import { NO_OFFLOAD, macKey, parseMac } from '../../../src/devices/net/wire.ts';
import { BROADCAST, frame } from './fixture.ts';

const MAC = ['52:54:00:00:01:00', '52:54:00:00:01:01', '52:54:00:00:01:02', '52:54:00:00:01:03'];

/** A switch with `n` ports, each recording what it receives. */
function rig(n: number, options: ConstructorParameters<typeof L2Switch>[0] = {}): { sw: L2Switch; ports: NetPort[]; got: Uint8Array[][] } {
  const sw = new L2Switch(options);
  const ports: NetPort[] = [];
  const got: Uint8Array[][] = [];
  for (let i = 0; i < n; i++) {
    const port = sw.createPort(`p${i}`);
    const inbox: Uint8Array[] = [];
    port.onReceive((f) => inbox.push(f));
    ports.push(port);
    got.push(inbox);
  }
  return { sw, ports, got };
}

const counts = (got: Uint8Array[][]): number[] => got.map((g) => g.length);

test('unknown unicast and broadcast flood to every other port; learned addresses go to one port', () => {
  const { sw, ports, got } = rig(4);
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [0, 1, 1, 1], 'unknown destination floods');
  ports[1].send(frame(MAC[0], MAC[1]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [1, 1, 1, 1], 'the reply goes only to the learned port');
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [1, 2, 1, 1], 'now both are learned');
  ports[2].send(frame(BROADCAST, MAC[2]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [2, 3, 1, 2], 'broadcast floods');
  ports[3].send(frame('01:00:5e:00:00:fb', MAC[3]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [3, 4, 2, 2], 'multicast floods');
  assert.deepEqual(new Set(sw.addresses().keys()), new Set(MAC.map((m) => macKey(parseMac(m)))));
  assert.equal(sw.addresses().get(macKey(parseMac(MAC[1]))), 'sw.p1');
});

test('per-port counters: frames and bytes each way, and drops', () => {
  const { ports } = rig(3);
  const unattached = ports[2];
  unattached.onReceive(undefined);
  ports[0].send(frame(BROADCAST, MAC[0], 100), NO_OFFLOAD);
  ports[0].send(new Uint8Array(10), NO_OFFLOAD);
  assert.deepEqual(
    { txPackets: ports[0].counters.txPackets, txBytes: ports[0].counters.txBytes, drops: ports[0].counters.drops },
    { txPackets: 2, txBytes: 110, drops: 1 },
    'a runt is counted in and dropped',
  );
  assert.deepEqual({ rxPackets: ports[1].counters.rxPackets, rxBytes: ports[1].counters.rxBytes }, { rxPackets: 1, rxBytes: 100 });
  assert.equal(unattached.counters.drops, 1, 'a port with nothing attached drops what reaches it');
});

test('learned addresses age out by the injected clock and frames flood again', () => {
  let now = 0;
  const { ports, got } = rig(3, { ageingMs: 1000, clock: () => now });
  ports[1].send(frame(MAC[0], MAC[1]), NO_OFFLOAD);
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [1, 1, 1]);
  now = 999;
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [1, 2, 1], 'still learned just before the ageing time');
  now = 999 + 1000;
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [1, 3, 2], 'aged out: flooded');
});

test('a frame for the port it came from is filtered; a station that moves is relearned', () => {
  const { ports, got } = rig(3);
  ports[1].send(frame(BROADCAST, MAC[1]), NO_OFFLOAD);
  ports[1].send(frame(MAC[1], MAC[2]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [1, 0, 1]);
  assert.equal(ports[1].counters.drops, 1);
  ports[0].send(frame(BROADCAST, MAC[1]), NO_OFFLOAD);
  ports[2].send(frame(MAC[1], MAC[2]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [2, 1, 2], 'MAC[1] now lives on port 0: the broadcast flooded, the unicast went to port 0 only');
  assert.deepEqual(got[0].at(-1), frame(MAC[1], MAC[2]));
});

test('the address table is bounded: the least recently refreshed entry makes room; a closed port is forgotten', () => {
  const { sw, ports, got } = rig(3, { maxAddresses: 2 });
  ports[0].send(frame(BROADCAST, MAC[0]), NO_OFFLOAD);
  ports[1].send(frame(BROADCAST, MAC[1]), NO_OFFLOAD);
  ports[2].send(frame(BROADCAST, MAC[2]), NO_OFFLOAD);
  assert.equal(sw.addresses().size, 2);
  assert.equal(sw.addresses().has(macKey(parseMac(MAC[0]))), false);
  ports[2].close();
  assert.equal(sw.addresses().has(macKey(parseMac(MAC[2]))), false);
  const before = counts(got);
  ports[0].send(frame(MAC[2], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [before[0], before[1] + 1, before[2]], 'a closed port receives nothing');
  ports[2].send(frame(BROADCAST, MAC[2]), NO_OFFLOAD);
  assert.equal(ports[2].counters.drops, 1, 'sending into a closed port is dropped');
});

test('what a port remembers of its last lookup follows the table: learned, moved, evicted, relearned', () => {
  const { ports, got } = rig(3, { maxAddresses: 2 });
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [0, 1, 1], 'unknown: flooded');
  ports[2].send(frame(BROADCAST, MAC[1]), NO_OFFLOAD);
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [1, 2, 2], 'learned since port 0 last asked: to port 2 only');
  ports[1].send(frame(BROADCAST, MAC[1]), NO_OFFLOAD);
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [2, 3, 3], 'moved to port 1: follows it');
  // The table holds two addresses: MAC[2] pushes out MAC[0], MAC[3] pushes out MAC[1].
  ports[2].send(frame(BROADCAST, MAC[2]), NO_OFFLOAD);
  ports[2].send(frame(BROADCAST, MAC[3]), NO_OFFLOAD);
  ports[0].send(frame(MAC[1], MAC[0]), NO_OFFLOAD);
  assert.deepEqual(counts(got), [4, 6, 4], 'evicted: flooded again');
});

test('switch options are checked', () => {
  assert.throws(() => new L2Switch({ ageingMs: 0 }), /ageing time 0 ms is not positive/);
  assert.throws(() => new L2Switch({ maxAddresses: 0 }), /address table size 0/);
});

test('random traffic with random pauses: every frame reaches exactly the ports an 802.1D learning model says', () => {
  const ports = 4;
  const ageing = 100;
  const station = fc.integer({ min: 0, max: 5 });
  fc.assert(
    fc.property(
      fc.array(
        fc.record({ port: fc.integer({ min: 0, max: ports - 1 }), src: station, dst: fc.oneof(station, fc.constant(-1)), pause: fc.integer({ min: 0, max: 150 }) }),
        { maxLength: 40 },
      ),
      (steps) => {
        let now = 0;
        const { ports: p, got } = rig(ports, { ageingMs: ageing, clock: () => now });
        const macOf = (s: number): string => (s < 0 ? BROADCAST : `52:54:00:00:02:0${s}`);
        /** The model: station → [port, last seen]. */
        const learned = new Map<number, [number, number]>();
        for (const step of steps) {
          now += step.pause;
          const before = counts(got);
          p[step.port].send(frame(macOf(step.dst), macOf(step.src)), NO_OFFLOAD);
          learned.set(step.src, [step.port, now]);
          const entry = step.dst < 0 ? undefined : learned.get(step.dst);
          const known = entry !== undefined && now - entry[1] < ageing;
          const expected = before.map((n, i) => {
            if (known) return n + (i === entry[0] && i !== step.port ? 1 : 0);
            return n + (i === step.port ? 0 : 1);
          });
          assert.deepEqual(counts(got), expected);
        }
      },
    ),
  );
});

test('sendAt: a frame given as bytes at an offset is forwarded as a view of exactly those bytes, the same view for the same buffer again', () => {
  const { sw, ports, got } = rig(2);
  const memory = new Uint8Array(256);
  const f = frame(MAC[1], MAC[0]);
  memory.set(f, 100);
  ports[0].sendAt!(memory, 100, f.length, NO_OFFLOAD);
  ports[0].sendAt!(memory, 100, f.length, NO_OFFLOAD);
  assert.deepEqual(counts(got), [0, 2]);
  assert.deepEqual([...got[1][0]], [...f]);
  assert.equal(got[1][0].buffer, memory.buffer, 'a view of the sender\'s bytes, not a copy');
  assert.equal(got[1][1], got[1][0], 'a buffer seen before lends the view made for it');
  assert.deepEqual([...sw.addresses().keys()], [macKey(parseMac(MAC[0]))], 'the source is learned from the bytes');
  assert.equal(ports[0].counters.txBytes, 2 * f.length);
});

test('a port alone on the switch learns what it sends, and the frame goes nowhere', () => {
  const { sw, ports, got } = rig(1);
  ports[0].sendAt!(frame(BROADCAST, MAC[0]), 0, 60, NO_OFFLOAD);
  ports[0].sendAt!(frame(MAC[1], MAC[0]), 0, 60, NO_OFFLOAD);
  assert.deepEqual(counts(got), [0]);
  assert.deepEqual([...sw.addresses().keys()], [macKey(parseMac(MAC[0]))]);
  assert.equal(ports[0].counters.txPackets, 2);
  ports[0].sendAt!(new Uint8Array(13), 0, 13, NO_OFFLOAD);
  assert.equal(ports[0].counters.drops, 1, 'a runt is dropped and counted');
});
