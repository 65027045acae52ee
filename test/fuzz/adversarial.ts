/**
 * The adversarial-driver harness: plays one Scenario (scenario.ts) against a real device — any
 * registered device type, on the in-memory back-ends its fuzz profile builds, one of its queues
 * at a time — through the real virtio-mmio register file and DeviceState, and checks what the
 * device promises a hostile driver:
 *
 * - nothing escapes as an exception from a register access, and nothing is rejected unhandled;
 * - every driver action ends within a step budget (guest memory translations, see CountingMemory),
 *   and asynchronous completions within a bounded number of microtask turns: no timers;
 * - no byte outside guest memory changes (the canaries of GuardedMemory);
 * - no request handler fails (a device bug logged at error level) and the back-end is never asked
 *   what the profile says it must not be (a disk only ranges inside the disk);
 * - after the garbage the device either still serves a well-formed request correctly, or sits in
 *   DEVICE_NEEDS_RESET; and after a reset and a clean set-up it serves again.
 *
 * A broken promise throws a Finding; fast-check (property()) shrinks the scenario and prints the
 * seed and path that reproduce it.
 */
import fc from 'fast-check';
import type { FuzzProfile, FuzzSubject } from '../../src/devices/device-type.ts';
import { MmioDevice } from '../../src/transports/mmio/device.ts';
import { DescFlag } from '../../src/virtio/constants.ts';
import { caseLog, firstErrorLine, firstEscape, startCase } from './case-watch.ts';
import { DATA_BASE, GuardedMemory } from './guarded-memory.ts';
import { type DescWords, Finding, HONEST, HostileDriver, tableAddress } from './hostile-driver.ts';
import { type Action, type Publish, type Scenario, profileNamed, scenario, type Target, type ValidRequest } from './scenario.ts';

/** Largest queue the devices accept; the step budget is sized for it. */
const MAX_QUEUE = 256;
/**
 * Translations one driver action may cost: one notification pops at most a ring's worth of chains
 * (§2.7.13: the avail index may lead by at most the queue size; §2.8: one lap of a packed ring),
 * each at most a ring's worth of direct descriptors plus an indirect table as long.
 */
const STEP_BUDGET = MAX_QUEUE * (2 * MAX_QUEUE + 2) + 64;
/** Microtask turns an asynchronous completion may take before it counts as hung. */
const MAX_TURNS = 2000;

/** Where well-formed requests keep their buffers: readable part, then writable part. */
const VALID_READABLE = DATA_BASE;
const VALID_WRITABLE = DATA_BASE + 0x800;
const UNWRITTEN = 0xee;
/** A well-formed event-queue buffer taking whatever the device still has waiting. */
const SINK_BYTES = 2048;
/** More events than any device keeps waiting for buffers. */
const MAX_WAITING_EVENTS = 1024;

/** What one case saw, for the run's summary. */
export interface Outcome {
  /** The profile attacked: "blk requestq". */
  readonly profile: string;
  /** Well-formed requests checked to complete while garbage was about (not counting the one after reset). */
  readonly servedAmidGarbage: number;
  /** The device ended the garbage in DEVICE_NEEDS_RESET. */
  readonly neededReset: boolean;
  /** Most guest memory translations one action took. */
  readonly maxSteps: number;
}

/** One case: the device, its memory and the driver attacking it. */
class Case {
  readonly memory = new GuardedMemory();
  readonly subject: FuzzSubject;
  readonly regs: MmioDevice;
  readonly driver: HostileDriver;
  servedAmidGarbage = 0;

  constructor(readonly target: Target) {
    this.subject = profileNamed(target.profile).create({ maxQueueSize: MAX_QUEUE, delayTurns: target.backendDelay });
    this.regs = new MmioDevice(this.subject.device, this.memory.device, { log: caseLog });
    this.driver = new HostileDriver(target, this.regs, this.memory.driver);
  }

  /** Run one synchronous driver action under the step budget; nothing may escape it. */
  act(what: string, fn: () => void): void {
    this.memory.device.startAction(STEP_BUDGET);
    try {
      fn();
    } catch (err) {
      if (err instanceof Finding) throw err;
      throw new Finding(`${what} threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
    }
    this.checkInvariants(what);
  }

  checkInvariants(what: string): void {
    const overrun = this.memory.device.overrun;
    if (overrun !== undefined) throw new Finding(`${what}: ${overrun.message}`);
    const guard = this.memory.firstDamagedGuard();
    if (guard !== undefined) throw new Finding(`${what}: host byte ${guard} outside guest memory changed`);
    const logged = firstErrorLine();
    if (logged !== undefined) throw new Finding(`${what}: the device logged an error: ${logged}`);
    const violation = this.subject.violation();
    if (violation !== undefined) throw new Finding(`${what}: ${violation}`);
    const escape = firstEscape();
    if (escape !== undefined) throw new Finding(`${what}: escaped ${escape}`);
  }

  /** The queue's popped-but-unreturned chains (0 when there is no live queue). */
  private inFlight(): number {
    return this.regs.state.liveQueue(this.driver.queue)?.inFlight ?? 0;
  }

  /** The attacked queue is an event queue: the device fills buffers when the host has something. */
  get eventQueue(): boolean {
    return this.subject.produce !== undefined;
  }

  /**
   * Let asynchronous completions run until nothing is in flight, within MAX_TURNS microtask turns.
   * On an event queue, buffers held for an event that needs more of them, or that no event fits,
   * are the queue's contract (event-queue.ts): there it is enough that nothing changes any more.
   */
  async drain(what: string): Promise<void> {
    let quiet = 0;
    let last = this.inFlight();
    for (let turn = 0; turn < MAX_TURNS; turn++) {
      await null;
      const now = this.inFlight();
      // A few turns past the last completion let a scheduled publish run.
      quiet = now === 0 || (this.eventQueue && now === last) ? quiet + 1 : 0;
      last = now;
      if (quiet > 4 + this.target.backendDelay) {
        this.checkInvariants(what);
        return;
      }
    }
    throw new Finding(`${what}: ${this.inFlight()} requests still in flight after ${MAX_TURNS} microtask turns`);
  }

  async perform(a: Action, i: number): Promise<void> {
    const d = this.driver;
    const what = `action ${i} (${a.op})`;
    switch (a.op) {
      case 'chain':
        this.offer(what, a.start, a.descs.map(HostileDriver.words), a.publish, a.kick);
        return;
      case 'indirect': {
        const addr = tableAddress(a.index);
        d.writeTable(addr, a.entries.map(HostileDriver.words));
        const head: DescWords = { addr, len: a.len ?? a.entries.length * 16, flags: a.extraFlags | DescFlag.INDIRECT, idOrNext: 0 };
        this.offer(what, a.index, [head], a.publish, a.kick);
        return;
      }
      case 'loop': {
        // A circle of `length` descriptors (split); on a packed ring, NEXT on every descriptor of a whole lap.
        const n = d.target.packed ? d.size : Math.min(a.length, d.size);
        const descs = Array.from({ length: n }, (_, k): DescWords => ({
          addr: DATA_BASE + 0x1000 + 16 * k,
          len: 16,
          flags: DescFlag.NEXT,
          idOrNext: (a.start + ((k + 1) % n)) % d.size,
        }));
        this.offer(what, a.start, descs, HONEST, a.kick);
        return;
      }
      case 'scribble':
        this.act(what, () => d.scribble(a.area, a.offset, a.bytes));
        return;
      case 'reg':
        this.act(what, () => d.writeRaw(a.offset, a.width, a.value));
        return;
      case 'notify':
        this.act(what, () => d.notify(a.queue));
        return;
      case 'drain':
        await this.drain(what);
        return;
      case 'valid':
        if (await this.serve(a.request, what)) this.servedAmidGarbage++;
        return;
      case 'produce':
        if (!this.eventQueue) return;
        this.act(what, () => this.subject.produce?.(a.seed));
        await this.drain(what);
        return;
      case 'reset':
        this.act(what, () => d.init());
        return;
      case 'scrambledInit':
        this.act(what, () => a.steps.forEach((s) => d.initStep(s)));
        return;
    }
  }

  /** Write a chain, make it available as `publish` says, and notify the device if `kick`. */
  private offer(what: string, start: number, descs: readonly DescWords[], publish: Publish, kick: boolean): void {
    this.act(what, () => this.driver.chain(start, descs, publish));
    if (kick) this.act(what, () => this.driver.notify());
  }

  /**
   * Submit a well-formed request where the device looks next and check its answer. Returns false
   * when the device is not running the queue as configured (garbage stopped or reconfigured it),
   * so no answer can be expected. Otherwise the request must complete correctly: nothing else is
   * available, so entering DEVICE_NEEDS_RESET over it would be refusing a well-formed chain.
   */
  async serve(req: ValidRequest, what: string): Promise<boolean> {
    const d = this.driver;
    // Let the device take whatever garbage is still pending, first.
    this.act(what, () => d.notify());
    await this.drain(what);
    if (this.eventQueue) {
      if (!(await this.flushEvents(req, what))) return false;
    } else {
      if (!d.running()) return false;
      const inFlight = this.inFlight();
      if (inFlight !== 0) throw new Finding(`${what}: ${inFlight} chains popped and never returned`);
    }

    const request = this.layOut(req);
    const useIndirect = req.indirect && this.target.indirect;
    // No chain may be longer than the queue size, indirect or not (§2.7.5.3.1, §2.8.7).
    const descs = request.descs.length <= d.size ? request.descs : request.merged;
    let completion: () => { id: number; len: number } | undefined = () => undefined;
    this.act(what, () => {
      completion = d.placeValid(descs, useIndirect);
      d.notify();
    });
    if (request.deliver !== undefined) this.act(what, request.deliver);
    await this.drain(what);
    const used = completion();
    if (used === undefined) {
      throw new Finding(
        `${what}: a well-formed ${this.target.profile} request was not completed; device status 0x${d.status.toString(16)}`,
      );
    }
    if (used.id !== 0) throw new Finding(`${what}: completion names buffer ${used.id}, not 0`);
    request.check(used.len, `${what}: ${this.target.profile}`);
    d.resync();
    return true;
  }

  /**
   * Before a probe on an event queue: the device pops only when it has an event, so the host
   * produces events until no garbage is left available, then the driver posts well-formed sink
   * buffers until nothing is left waiting in the device (a rest of a byte stream, the second half
   * of an input group, a frame waiting for more merged buffers). True when the queue then runs,
   * holds nothing and has nothing waiting, so the probe's buffer must receive the probe's event;
   * false when garbage stopped the queue, or when the device legitimately holds a buffer no event
   * fits (event-queue.ts drops such events, and the buffer waits for one that fits).
   */
  private async flushEvents(req: ValidRequest, what: string): Promise<boolean> {
    const d = this.driver;
    // Each round pops at least one chain or takes one waiting event: a ring of garbage, then the
    // events the device keeps waiting (its backlog: input's and vsock's 256), one a sink.
    const rounds = 2 * d.size + MAX_WAITING_EVENTS;
    for (let round = 0; round < rounds; round++) {
      if (!d.running()) return false;
      if (d.hasAvailable()) {
        const [base, held] = [d.position, this.inFlight()];
        this.act(what, () => this.subject.produce?.(req.seed));
        await this.drain(what);
        if (d.position !== base || this.inFlight() !== held) continue;
        // The event took no buffer: the device holds as many as the ring can make available at
        // once (a frame larger than a ring of merged buffers, §5.1.6.3.1 lets each be as small as
        // the header) and drops what does not fit them. Only buffers held can excuse it.
        if (held === 0) throw new Finding(`${what}: an event left the available buffers where they were, and none is held`);
        return false;
      }
      const before = this.inFlight();
      let completion: () => { id: number; len: number } | undefined = () => undefined;
      this.act(what, () => {
        completion = d.placeValid([{ addr: VALID_WRITABLE, len: SINK_BYTES, flags: DescFlag.WRITE, idOrNext: 0 }], false);
        d.notify();
      });
      await this.drain(what);
      if (!d.running()) return false;
      if (completion() === undefined && this.inFlight() === before) {
        // Nothing waited for the sink, which stays available where the probe goes now.
        return before === 0;
      }
      d.resync();
    }
    throw new Finding(`${what}: the device still took buffers after ${rounds} rounds of events and sink buffers`);
  }

  /** The buffers of a well-formed request, written to guest memory, and how to check its answer. */
  private layOut(req: ValidRequest): {
    descs: DescWords[];
    merged: DescWords[];
    check: (len: number, what: string) => void;
    deliver: (() => void) | undefined;
  } {
    const mem = this.memory.driver;
    const probe = this.subject.probe(req.seed);
    const readable = probe.readable;
    const writableLen = probe.writable;
    const check = (len: number, what: string): void => {
      const wrong = probe.check(mem.slice(VALID_WRITABLE, writableLen), len);
      if (wrong !== undefined) throw new Finding(`${what}: ${wrong}`);
    };
    mem.write(VALID_READABLE, readable);
    mem.slice(VALID_WRITABLE, writableLen).fill(UNWRITTEN);
    const parts = (addr: number, len: number, n: number, flags: number): DescWords[] => {
      if (len === 0) return [];
      if (n === 1 || len < 2) return [{ addr, len, flags, idOrNext: 0 }];
      const half = len >>> 1;
      return [
        { addr, len: half, flags, idOrNext: 0 },
        { addr: addr + half, len: len - half, flags, idOrNext: 0 },
      ];
    };
    const chain = (readParts: number, writeParts: number): DescWords[] => [
      ...parts(VALID_READABLE, readable.length, readParts, 0),
      ...parts(VALID_WRITABLE, writableLen, writeParts, DescFlag.WRITE),
    ];
    return { descs: chain(req.readParts, req.writeParts), merged: chain(1, 1), check, deliver: probe.deliver?.bind(probe) };
  }
}

/** Play one scenario; throws a Finding when the device breaks a promise. */
export async function runScenario(s: Scenario): Promise<Outcome> {
  startCase();
  const c = new Case(s.target);
  c.act('set-up', () => c.driver.init());
  for (let i = 0; i < s.actions.length; i++) {
    await c.perform(s.actions[i], i);
    if (s.recover && c.driver.needsReset) c.act(`recovery after action ${i}`, () => c.driver.init());
  }
  // After the garbage: the device serves, or needs a reset...
  // (serve() fails the case when the device runs the queue and still does not answer.)
  const servedAfter = await c.serve(s.final, 'after the garbage');
  const neededReset = c.driver.needsReset;
  // ... and after a reset and a clean set-up it serves again.
  c.act('reset', () => c.driver.init());
  if (!(await c.serve(s.final, 'after reset'))) throw new Finding('the device did not run after a clean set-up');
  // Rejections surface once the microtask queue has drained: give them one turn of the event loop.
  await new Promise<void>((resolve) => setImmediate(resolve));
  c.checkInvariants('end of case');
  return {
    profile: s.target.profile,
    servedAmidGarbage: c.servedAmidGarbage + (servedAfter ? 1 : 0),
    neededReset,
    maxSteps: c.memory.device.maxSteps,
  };
}

/**
 * The property: every scenario keeps every promise. `seen` receives each outcome (for a summary);
 * `profiles` narrows the attacked queues (default every registered device type's).
 */
export function property(seen: (o: Outcome) => void = () => {}, profiles?: readonly FuzzProfile[]): fc.IAsyncPropertyWithHooks<[Scenario]> {
  return fc.asyncProperty(scenario(profiles), async (s) => {
    seen(await runScenario(s));
  });
}
