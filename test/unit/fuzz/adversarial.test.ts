/**
 * A bounded slice of the adversarial-driver fuzzing (test/fuzz/adversarial.ts); `npm run fuzz`
 * runs the long campaigns. Each case plays a hostile driver against one queue of a registered
 * device type over mmio, split or packed, with any mix of EVENT_IDX, INDIRECT_DESC and IN_ORDER.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { type Outcome, property, runScenario } from '../../fuzz/adversarial.ts';
import { DescFlag } from '../../../src/virtio/constants.ts';
import { type Action, PROFILES, type Scenario, type ValidRequest } from '../../fuzz/scenario.ts';

test('property: a hostile driver never breaks the device, which serves again or needs reset', async () => {
  const outcomes: Outcome[] = [];
  await fc.assert(property((o) => outcomes.push(o)), { numRuns: 300 });
  // The slice exercised both endings: devices that kept serving and devices that needed a reset.
  assert.ok(outcomes.some((o) => o.neededReset));
  assert.ok(outcomes.some((o) => o.servedAmidGarbage > 0));
  // Every registered device type's queues were attacked.
  assert.deepEqual(new Set(outcomes.map((o) => o.profile)), new Set(PROFILES.map((p) => p.name)));
});

/** blk probes: choice 0 reads, 1 writes, 3 is GET_ID; a = 3 and b = 1 make it sectors 3-4. */
const read: ValidRequest = { seed: { choice: 0, a: 3, b: 1, fill: 7 }, readParts: 1, writeParts: 2, indirect: true };
const write: ValidRequest = { ...read, seed: { ...read.seed, choice: 1 }, indirect: false };
const getId: ValidRequest = { ...read, seed: { ...read.seed, choice: 3 } };

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';
  const target = { profile: 'blk requestq', packed, eventIdx: true, indirect: true, inOrder: false, queueSize: 4, backendDelay: 2 } as const;

  test(`${ring}: a chain whose descriptors loop puts the device in NEEDS_RESET, and a reset brings it back`, async () => {
    const s: Scenario = { target, actions: [{ op: 'loop', start: 1, length: 3, kick: true }], recover: false, final: read };
    const o = await runScenario(s);
    assert.equal(o.neededReset, true);
  });

  test(`${ring}: a driver that resets after a fault is served again, garbage and all`, async () => {
    const s: Scenario = {
      target,
      actions: [
        { op: 'loop', start: 0, length: 2, kick: true },
        { op: 'valid', request: read },
      ],
      recover: true,
      final: read,
    };
    const o = await runScenario(s);
    assert.equal(o.neededReset, false);
    assert.equal(o.servedAmidGarbage, 2);
  });

  test(`${ring}: an indirect table outside guest memory (above 2^53) is refused, not followed`, async () => {
    const s: Scenario = {
      target,
      actions: [
        {
          op: 'chain',
          start: 0,
          descs: [{ addr: { kind: 'raw', lo: 0, hi: 0x20_0000 }, len: 32, flags: 4, next: 0 }],
          publish: { entry: undefined, advance: 1, lie: undefined },
          kick: true,
        },
      ],
      recover: false,
      final: read,
    };
    assert.equal((await runScenario(s)).neededReset, true);
  });

  test(`${ring}: well-formed requests between garbage are served`, async () => {
    const s: Scenario = {
      target,
      actions: [
        { op: 'scribble', area: 'device', offset: 0, bytes: Uint8Array.of(0xff, 0xff, 0xff, 0xff) },
        { op: 'valid', request: write },
        { op: 'reg', offset: 0x100, width: 1, value: 0xff },
        { op: 'valid', request: read },
      ],
      recover: false,
      final: getId,
    };
    const o = await runScenario(s);
    assert.equal(o.neededReset, false);
    assert.equal(o.servedAmidGarbage, 3);
  });
}

/** An event-queue probe seed: input key 4 going down, console's 4 bytes into a buffer of 8. */
const event: ValidRequest = { seed: { choice: 0, a: 3, b: 7, fill: 0x41 }, readParts: 1, writeParts: 1, indirect: false };
const writable = (len: number): Action => ({
  op: 'chain',
  start: 0,
  descs: [{ addr: { kind: 'data', offset: 0x1000 }, len, flags: DescFlag.WRITE, next: 0 }],
  publish: { entry: undefined, advance: 1, lie: undefined },
  kick: true,
});

for (const packed of [false, true]) {
  const ring = packed ? 'packed' : 'split';
  const on = (profile: string): Scenario['target'] => ({ profile, packed, eventIdx: false, indirect: false, inOrder: true, queueSize: 4, backendDelay: 0 });

  test(`${ring}: an input eventq buffer too small for an event is popped by the next key press and needs reset`, async () => {
    const s: Scenario = { target: on('input eventq'), actions: [writable(4), { op: 'produce', seed: event.seed }], recover: false, final: event };
    assert.equal((await runScenario(s)).neededReset, true);
  });

  test(`${ring}: a net receiveq ring of header-sized buffers is held, every frame dropped, until a reset`, async () => {
    // MRG_RXBUF lets each buffer be as small as virtio_net_hdr (§5.1.6.3.1); a ring of one cannot take a frame.
    const s: Scenario = { target: { ...on('net receiveq'), queueSize: 1 }, actions: [writable(12), { op: 'valid', request: event }], recover: false, final: event };
    const o = await runScenario(s);
    assert.equal(o.neededReset, false);
    assert.equal(o.servedAmidGarbage, 0);
  });

  test(`${ring}: console host input fills a hostile driver's buffer first, then the probe's`, async () => {
    const s: Scenario = { target: on('console receiveq'), actions: [writable(3), { op: 'valid', request: event }], recover: false, final: event };
    const o = await runScenario(s);
    assert.equal(o.neededReset, false);
    assert.equal(o.servedAmidGarbage, 2);
  });
}
