/**
 * A bounded slice of the hostile-device fuzzing (test/fuzz/driver-adversarial.ts); `npm run fuzz
 * -- --driver NAME` runs the long campaigns. Each case plays a lying device against a guest
 * driver: the generic core or a registered device type's.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { type DriverOutcome, driverProperty, runDriverScenario } from '../../fuzz/driver-adversarial.ts';
import { DRIVER_PROFILES, type DeviceMove, type DriverScenario, type IdentityChoice, type NamedDriverProfile } from '../../fuzz/driver-scenario.ts';
import { Feature, featureBit } from '../../../src/virtio/constants.ts';
import { BlkFeature } from '../../../src/devices/blk/wire.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import type { HostileDevice, UsedLie } from '../../fuzz/hostile-device.ts';

test('property: a lying device never breaks a driver, whose operations settle with clear errors', async () => {
  const outcomes: DriverOutcome[] = [];
  await fc.assert(driverProperty((o) => outcomes.push(o)), { numRuns: 150 });
  assert.ok(outcomes.some((o) => o.opened && o.lies > 0));
  assert.ok(outcomes.some((o) => o.failed > 0));
  assert.ok(outcomes.some((o) => o.completed > 0));
  // The generic core and every registered device type's driver were played.
  assert.deepEqual(new Set(outcomes.map((o) => o.profile)), new Set(DRIVER_PROFILES.map((p) => p.name)));
});

const honest: IdentityChoice = {
  wrongId: false,
  legacy: false,
  ringFeatures: 0n,
  deviceMask: 0n,
  extra: 0n,
  acceptFeatures: true,
  numQueues: undefined,
  maxSizes: [8],
  config: undefined,
  configSeed: { choice: 0, a: 0, b: 0, fill: 1 },
  unsettledReads: 0,
};

const read = { op: 'operate', seed: { choice: 0, a: 700, b: 0, fill: 1 } } as const;
const lie = (l: Partial<UsedLie>): DeviceMove => ({
  op: 'lie',
  queue: 0,
  lie: { id: { kind: 'raw', value: 5 }, len: 4, past: false, advance: 1, flags: 0x8080, rightLap: true, ...l },
});

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';
  const identity = { ...honest, ringFeatures: packed ? featureBit(Feature.RING_PACKED) : 0n };

  test(`${ring}: a used element naming a buffer not in flight fails the rng read clearly, and close still gives all memory back`, async () => {
    const s: DriverScenario = { profile: 'rng', identity, moves: [read, lie({ id: { kind: 'raw', value: 0xffff } })] };
    const o = await runDriverScenario(s);
    assert.equal(o.failed, 1);
    assert.equal(o.lies, 1);
  });

  test(`${ring}: a used length past the buffer is clamped, and the read completes`, async () => {
    const s: DriverScenario = {
      profile: 'rng',
      identity,
      moves: [read, lie({ id: { kind: 'inFlight', index: 0 }, len: 0xffff_ffff, past: false })],
    };
    const o = await runDriverScenario(s);
    assert.equal(o.completed + o.failed, 1);
  });

  test(`${ring}: the core's requests settle once each whatever the used ring says`, async () => {
    const ops = [0, 1, 2, 3].map((i) => ({ op: 'operate', seed: { choice: i % 3, a: 40, b: 40 + i, fill: 5 } }) as const);
    const s: DriverScenario = {
      profile: 'core',
      identity: { ...identity, ringFeatures: identity.ringFeatures | featureBit(Feature.IN_ORDER) | featureBit(Feature.EVENT_IDX) },
      moves: [...ops, lie({ id: { kind: 'inFlight', index: 1 }, advance: 3 }), { op: 'serve', queue: 0, count: 9, seed: ops[0].seed }, ...ops],
    };
    await runDriverScenario(s);
  });
}

test('a device whose configuration generation never settles after a change leaves the blk driver running (no unhandled rejection)', async () => {
  const s: DriverScenario = {
    profile: 'blk',
    identity: { ...honest, maxSizes: [256] },
    moves: [{ op: 'config', bytes: undefined, seed: honest.configSeed, unsettledReads: 1000 }, { op: 'operate', seed: { choice: 0, a: 1, b: 0, fill: 3 } }],
  };
  const o = await runDriverScenario(s);
  assert.equal(o.completed, 1);
});

test('blk: a device claiming 65535 queues and num_queues 65535 gets a driver on a few rings that completes a read', async () => {
  // configSeed choice 15: the profile's configuration claims num_queues 0xffff; deviceMask offers MQ.
  const s: DriverScenario = {
    profile: 'blk',
    identity: { ...honest, numQueues: 0xffff, maxSizes: [256], deviceMask: featureBit(BlkFeature.MQ), configSeed: { choice: 15, a: 0, b: 0, fill: 1 } },
    moves: [{ op: 'operate', seed: { choice: 0, a: 1, b: 0, fill: 3 } }],
  };
  const o = await runDriverScenario(s);
  assert.ok(o.opened);
  assert.equal(o.completed, 1);
});

/** A driver that believes the device's queue count, as the blk driver once did. */
const coreProfile = DRIVER_PROFILES.find((p) => p.name === 'core')!;
const believer: NamedDriverProfile = {
  ...coreProfile,
  async open(transport, log) {
    const driver = await VirtioDriver.start(transport, { name: 'believer', deviceId: coreProfile.deviceId, features: 0n, queues: (plan) => plan.deviceQueues(), log });
    return { operate: async () => {}, close: () => driver.close() };
  },
};

test('the harness reports a driver that sets up a ring for every queue a device claims', async () => {
  const s: DriverScenario = { profile: 'core', identity: { ...honest, numQueues: 300, maxSizes: [1] }, moves: [] };
  await assert.rejects(runDriverScenario(s, believer), /beyond the 66 any driver wants: it believed the device's queue count 300/);
});

test('balloon: closing the driver gives every inflated page back, failed batches included', async () => {
  // The honest configuration asks for 0x01010101 pages: the balloon takes all the memory it can.
  for (const moves of [[], [lie({ id: { kind: 'raw', value: 0xffff } })], [{ op: 'needsReset' } as const]]) {
    await runDriverScenario({ profile: 'balloon', identity: { ...honest, maxSizes: [256] }, moves });
  }
});

/** A driver that breaks its promises, to check that the harness notices. */
function broken(how: 'typeError' | 'leak' | 'hang'): NamedDriverProfile {
  const core = DRIVER_PROFILES.find((p) => p.name === 'rng')!;
  return {
    ...core,
    name: 'rng',
    async open(transport, log) {
      const driver = await core.open(transport, log);
      return {
        operate: async (seed) => {
          if (how === 'typeError') throw new TypeError('Cannot read properties of undefined');
          if (how === 'leak') transport.dma.alloc(64, 8);
          if (how === 'hang') return new Promise(() => {});
          return driver.operate(seed);
        },
        close: () => driver.close(),
      };
    },
  };
}

test('the harness reports a TypeError, leaked DMA memory and an operation that never settles', async () => {
  const s: DriverScenario = { profile: 'rng', identity: honest, moves: [read] };
  await assert.rejects(runDriverScenario(s, broken('typeError')), /TypeError: Cannot read/);
  await assert.rejects(runDriverScenario(s, broken('leak')), /64 bytes of DMA memory not given back after close/);
  await assert.rejects(runDriverScenario(s, broken('hang')), /operation 0 still pending after the driver was closed/);
});

test('the harness reports a driver that broke a ring rule while the device was honest', async () => {
  const rng = DRIVER_PROFILES.find((p) => p.name === 'rng')!;
  const scribbler: NamedDriverProfile = {
    ...rng,
    async open(transport, log) {
      const driver = await rng.open(transport, log);
      const device = transport as HostileDevice;
      return {
        operate: (seed) => {
          const done = driver.operate(seed);
          // The first descriptor now claims 2^32 - 1 bytes, which run off guest memory (§2.7.5).
          const desc = device.queues.get(0)!.config.desc;
          transport.memory.slice(desc + 8, 4).fill(0xff);
          return done;
        },
        close: () => driver.close(),
      };
    },
  };
  const s: DriverScenario = { profile: 'rng', identity: honest, moves: [read, { op: 'serve', queue: 0, count: 9, seed: read.seed }] };
  await assert.rejects(runDriverScenario(s, scribbler), /the device-side ring code refused what the driver made available/);
});

test('console: waiting for a port the device never names fails when the driver is closed, instead of hanging', async () => {
  const consolePort = { op: 'operate', seed: { choice: 2, a: 0, b: 0, fill: 1 } } as const;
  const named = { op: 'operate', seed: { choice: 3, a: 1, b: 0, fill: 1 } } as const;
  // Without MULTIPORT port 0 is the console; no port is ever named.
  const o = await runDriverScenario({ profile: 'console', identity: { ...honest, maxSizes: [256] }, moves: [consolePort, named] });
  assert.equal(o.completed, 1);
  assert.equal(o.failed, 1);
});

test('vsock: a transport reset fails a connection being made, without an error event nobody can listen to', async () => {
  const connect = { op: 'operate', seed: { choice: 0, a: 10, b: 1, fill: 1 } } as const;
  // Any buffer the device returns on the event queue (queue 2) is a transport reset.
  const reset = { op: 'serve', queue: 2, count: 1, seed: connect.seed } as const;
  const o = await runDriverScenario({ profile: 'vsock', identity: { ...honest, maxSizes: [256] }, moves: [connect, reset] });
  assert.equal(o.failed, 1);
});

test('vsock: an open that fails after the rings are set up (a generation that never settles) gives every DMA byte back', async () => {
  const o = await runDriverScenario({ profile: 'vsock', identity: { ...honest, maxSizes: [256], unsettledReads: 1000 }, moves: [] });
  assert.equal(o.opened, false);
});
