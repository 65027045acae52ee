/**
 * The hostile-device harness: plays one DriverScenario (driver-scenario.ts) against a real guest
 * driver — the generic core, or any registered device type's guest half — through HostileDevice,
 * and checks what a driver promises a device it cannot trust (docs/security.md):
 *
 * - nothing escapes as an exception or an unhandled rejection, and the driver logs no error
 *   (a completion or interrupt handler that threw);
 * - no byte outside guest memory changes (the canaries of GuardedMemory);
 * - the driver breaks no ring rule while the device is honest (the device-side ring code checks
 *   what it makes available), accepts no feature that was not offered, and keeps its own
 *   promises (a request is called back exactly once, with no more bytes than it offered);
 * - every operation settles: once the device turned honest again for a bounded number of turns,
 *   or at the latest when the driver is closed, each has completed or failed with an Error of
 *   its own (not a TypeError or an engine RangeError: a broken device is reported, not tripped
 *   over), and closing never hangs;
 * - memory stays bounded: once closed, every DMA byte the driver took is given back.
 *
 * Everything is bounded in event-loop turns, never in time. A broken promise throws a Finding;
 * fast-check shrinks the scenario and prints the seed and path that reproduce it.
 */
import fc from 'fast-check';
import type { DriverUnderTest, ProbeSeed } from '../../src/devices/device-type.ts';
import { Feature, featureBit } from '../../src/virtio/constants.ts';
import { HostileDevice, type Identity } from './hostile-device.ts';
import { caseLog, describeError, firstErrorLine, firstEscape, startCase } from './case-watch.ts';
import { Finding } from './hostile-driver.ts';
import { type DeviceMove, type DriverScenario, type NamedDriverProfile, driverProfileNamed, driverScenario } from './driver-scenario.ts';

/** Event-loop turns an operation, an open or a close may take once the device is honest. */
const MAX_TURNS = 400;
/** Milliseconds an open may take (see settleOpen): far more than any open needs, short enough to report a hang. */
const OPEN_MILLIS = 10_000;

/** What one case saw, for the run's summary. */
export interface DriverOutcome {
  readonly profile: string;
  /** The driver opened (initialization succeeded despite whatever the device said). */
  readonly opened: boolean;
  /** Operations that completed, and that failed with a clear error. */
  readonly completed: number;
  readonly failed: number;
  /** Used elements the device made up. */
  readonly lies: number;
}

function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Messages the engine or Node gives a RangeError: an index computed from device input, unchecked. */
const ENGINE_RANGE = /^(Invalid (typed )?array length|Invalid array buffer length|Offset is outside|offset is out of bounds|Start offset|Maximum call stack|Array buffer allocation failed|Source is too large|The value of ")/;

/** Why `err` is not a clear error of the driver's own, or undefined when it is. */
export function unclear(err: unknown): string | undefined {
  if (!(err instanceof Error)) return `rejected with a non-Error: ${String(err)}`;
  if (err instanceof TypeError || err instanceof ReferenceError || err instanceof SyntaxError) return `failed with ${describeError(err)}`;
  if (err instanceof RangeError && (ENGINE_RANGE.test(err.message) || 'code' in err)) return `failed with the engine's ${describeError(err)}`;
  return undefined;
}

/** A promise whose fate is read without awaiting it. */
class Tracked<T> {
  state: 'pending' | 'resolved' | 'rejected' = 'pending';
  value: T | undefined;
  error: unknown;
  constructor(promise: Promise<T>) {
    promise.then(
      (v) => {
        this.state = 'resolved';
        this.value = v;
      },
      (e: unknown) => {
        this.state = 'rejected';
        this.error = e;
      },
    );
  }
}

/** Run `fn` as a tracked promise; a synchronous throw counts as a rejection. */
function track<T>(fn: () => Promise<T>): Tracked<T> {
  try {
    return new Tracked(fn());
  } catch (err) {
    return new Tracked(Promise.reject(err));
  }
}

class DriverCase {
  readonly device: HostileDevice;
  readonly ops: Tracked<unknown>[] = [];
  driver: DriverUnderTest | undefined;
  lies = 0;

  constructor(
    readonly profile: NamedDriverProfile,
    readonly scenario: DriverScenario,
  ) {
    this.device = new HostileDevice(identityOf(profile, scenario));
  }

  check(what: string): void {
    const guard = this.device.guarded.firstDamagedGuard();
    if (guard !== undefined) throw new Finding(`${what}: host byte ${guard} outside guest memory changed`);
    const escape = firstEscape();
    if (escape !== undefined) throw new Finding(`${what}: escaped ${escape}`);
    const logged = firstErrorLine();
    if (logged !== undefined) throw new Finding(`${what}: the driver logged an error: ${logged}`);
    const fault = this.device.driverFaults[0];
    if (fault !== undefined) throw new Finding(`${what}: ${fault}`);
    const violation = this.driver?.violation?.();
    if (violation !== undefined) throw new Finding(`${what}: ${violation}`);
    for (const op of this.ops) {
      if (op.state !== 'rejected') continue;
      const why = unclear(op.error);
      if (why !== undefined) throw new Finding(`${what}: an operation ${why}`);
    }
  }

  /** Let `t` settle within MAX_TURNS turns while the device answers honestly; a Finding if it does not. */
  async settle(t: Tracked<unknown>, what: string, serve: boolean): Promise<void> {
    for (let i = 0; i < MAX_TURNS && t.state === 'pending'; i++) {
      if (serve) this.serveAll(i);
      await turn();
    }
    if (t.state === 'pending') throw new Finding(`${what} did not settle within ${MAX_TURNS} turns`);
  }

  /**
   * Let the open settle while the device answers honestly. Opening goes through the descriptor's
   * lazy `import()`, which tsx's module hooks answer from another thread after any number of
   * turns; so this one wait is bounded in time instead (OPEN_MILLIS), however many turns it spins.
   */
  async settleOpen(t: Tracked<unknown>): Promise<void> {
    const until = Date.now() + OPEN_MILLIS;
    for (let i = 0; t.state === 'pending' && Date.now() < until; i++) {
      this.serveAll(i);
      await turn();
    }
    if (t.state === 'pending') throw new Finding(`opening the driver did not settle within ${OPEN_MILLIS} ms of honest answers`);
  }

  /** Answer everything available on every queue honestly. */
  serveAll(round: number): void {
    for (const q of this.device.queues.values()) this.device.serve(q, Infinity, (readable, writable) => this.respond(q.index, readable, writable, round));
  }

  respond(queue: number, readable: Uint8Array, writable: number, round: number): Uint8Array {
    // Choice 0: without a profile's answer, zeros, the success status of most requests.
    const seed = { choice: 0, a: writable, b: readable.length, fill: (round % 255) + 1 };
    return this.answer(queue, readable, writable, seed);
  }

  /** The profile's honest answer, or else zeros (the success status of most requests) or a byte pattern. */
  answer(queue: number, readable: Uint8Array, writable: number, seed: ProbeSeed): Uint8Array {
    if (this.profile.respond !== undefined) return this.profile.respond(queue, readable, writable, seed);
    return new Uint8Array(Math.min(writable, seed.a)).fill(seed.choice % 2 === 0 ? 0 : seed.fill);
  }

  async play(move: DeviceMove): Promise<void> {
    const { device } = this;
    switch (move.op) {
      case 'operate': {
        const driver = this.driver!;
        this.ops.push(track(() => driver.operate(move.seed)));
        break;
      }
      case 'serve': {
        const q = device.queueAt(move.queue);
        if (q !== undefined) device.serve(q, move.count, (r, w) => this.answer(q.index, r, w, move.seed));
        break;
      }
      case 'lie': {
        const q = device.queueAt(move.queue);
        if (q !== undefined && device.running) {
          device.lie(q, move.lie);
          this.lies++;
        }
        break;
      }
      case 'scribble': {
        const q = device.queueAt(move.queue);
        if (q !== undefined) device.scribble(q, move.area, move.offset, move.bytes);
        break;
      }
      case 'interrupt':
        device.interruptQueue(move.queue);
        break;
      case 'config':
        device.changeConfig(move.bytes ?? this.profile.config(move.seed), move.unsettledReads);
        break;
      case 'needsReset':
        device.signalNeedsReset();
        break;
      case 'wait':
        for (let i = 0; i < move.turns; i++) await turn();
        break;
    }
    await turn();
  }

  async run(): Promise<DriverOutcome> {
    const opening = track(() => this.profile.open(this.device, caseLog));
    await this.settleOpen(opening);
    this.check('open');
    if (opening.state === 'rejected') {
      const why = unclear(opening.error);
      if (why !== undefined) throw new Finding(`opening the driver ${why}`);
    }
    const driver = opening.value;
    if (driver !== undefined) {
      this.driver = driver;
      for (const [i, move] of this.scenario.moves.entries()) {
        await this.play(move);
        this.check(`move ${i} (${move.op})`);
      }
      // The device turns honest: whatever the driver still waits for, it gets.
      for (let i = 0; i < MAX_TURNS && this.ops.some((op) => op.state === 'pending'); i++) {
        this.serveAll(i);
        await turn();
      }
      this.check('after honest answers');
      await this.settle(track(() => driver.close()), 'closing the driver', true);
      // Failures are delivered on later turns than the close itself.
      for (let i = 0; i < 4; i++) await turn();
      const pending = this.ops.findIndex((op) => op.state === 'pending');
      if (pending >= 0) throw new Finding(`operation ${pending} still pending after the driver was closed`);
      this.check('close');
    }
    const leaked = this.device.initialFreeBytes - this.device.dma.freeBytes;
    if (leaked !== 0) throw new Finding(`${leaked} bytes of DMA memory not given back ${driver === undefined ? 'after a failed open' : 'after close'}`);
    return {
      profile: this.profile.name,
      opened: driver !== undefined,
      completed: this.ops.filter((op) => op.state === 'resolved').length,
      failed: this.ops.filter((op) => op.state === 'rejected').length,
      lies: this.lies,
    };
  }
}

function identityOf(profile: NamedDriverProfile, s: DriverScenario): Identity {
  const id = s.identity;
  const version = id.legacy ? 0n : featureBit(Feature.VERSION_1);
  return {
    deviceId: id.wrongId ? profile.deviceId + 1 : profile.deviceId,
    features: ((version | id.ringFeatures | (profile.features & id.deviceMask) | id.extra) & ((1n << 64n) - 1n)),
    acceptFeatures: id.acceptFeatures,
    numQueues: id.numQueues ?? profile.queues,
    maxSizes: id.maxSizes,
    config: id.config ?? profile.config(id.configSeed),
    unsettledReads: id.unsettledReads,
  };
}

/** Play one scenario; throws a Finding when the driver broke a promise. */
export async function runDriverScenario(s: DriverScenario, profile = driverProfileNamed(s.profile)): Promise<DriverOutcome> {
  startCase();
  const c = new DriverCase(profile, s);
  try {
    return await c.run();
  } finally {
    // Interrupts and timers a broken case left behind fire into the next turns, not the next case.
    for (let i = 0; i < 2; i++) await turn();
  }
}

export function driverProperty(seen: (o: DriverOutcome) => void = () => {}, profiles?: readonly NamedDriverProfile[]): fc.IAsyncPropertyWithHooks<[DriverScenario]> {
  return fc.asyncProperty(driverScenario(profiles), async (s) => {
    seen(await runDriverScenario(s));
  });
}
