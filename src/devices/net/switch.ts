/**
 * An in-process Ethernet learning switch (IEEE 802.1D forwarding without spanning tree): any
 * number of ports; source addresses are learned per port and forgotten after `ageingMs`
 * without traffic; frames to a known unicast address go to its port, everything else (unknown
 * unicast, multicast, broadcast) floods to every other port.
 *
 * Time comes from an injectable clock and ageing is checked on lookup, so the switch runs no
 * timer and tests control time exactly. The address table is bounded: when full, the entry
 * least recently refreshed makes room. A known source on its known port only has its time
 * stamped (no allocation, no reordering); its place in the refresh order moves at most once per
 * REORDER_MS, so "least recently refreshed" is exact to that granularity.
 *
 * A known destination costs no table lookup either: each port remembers the last source and
 * destination address it saw with their entries (AddressCache), valid until the table gains or
 * loses an entry. A stream of frames between two stations, the common case, is forwarded with
 * a few byte comparisons, a time stamp and the receiver's call.
 */
import { ViewCache } from '../../virtio/memory.ts';
import { type FrameHandler, type NetPort, PortCounters } from './port.ts';
import { ETH_HLEN, type Offload, isGroupMac, macKey } from './wire.ts';

export interface SwitchOptions {
  /** Name for ports and logs (default "sw"). */
  readonly name?: string;
  /** How long a learned address lives without frames from it (default 300 s, as 802.1D). */
  readonly ageingMs?: number;
  /** Milliseconds, monotonic (default performance.now). */
  readonly clock?: () => number;
  /** Most addresses learned (default 4096). */
  readonly maxAddresses?: number;
}

interface Learned {
  port: SwitchPort;
  /** When a frame from this address last came in. */
  seen: number;
  /** When the entry last moved to the end of the table's refresh order. */
  ordered: number;
}

/** How stale an entry's place in the refresh order may get before a frame moves it to the end. */
const REORDER_MS = 1000;

/**
 * performance.now(), read once per synchronous run of the event loop: the frames of one burst
 * (a transmit queue drained in one go) share a time stamp, which costs ageing in seconds nothing
 * and saves a native call per frame. An injected clock is read per frame, as tests expect.
 */
let burstStamp = -1;
const endBurst = (): void => {
  burstStamp = -1;
};
function burstClock(): number {
  if (burstStamp < 0) {
    burstStamp = performance.now();
    queueMicrotask(endBurst);
  }
  return burstStamp;
}

/**
 * The last address one port looked up, as three 16-bit numbers (small integers: no allocation to
 * compare), with the table entry it found (undefined: not learned), valid while the table's
 * generation is the one it was found in.
 */
class AddressCache {
  private hi = -1;
  private mid = 0;
  private lo = 0;
  private generation = -1;
  entry: Learned | undefined;

  /** Whether the address at `frame[at]` is the cached one and the table did not change since. */
  hit(frame: Uint8Array, at: number, generation: number): boolean {
    return (
      generation === this.generation &&
      ((frame[at] << 8) | frame[at + 1]) === this.hi &&
      ((frame[at + 2] << 8) | frame[at + 3]) === this.mid &&
      ((frame[at + 4] << 8) | frame[at + 5]) === this.lo
    );
  }

  store(frame: Uint8Array, at: number, generation: number, entry: Learned | undefined): void {
    this.hi = (frame[at] << 8) | frame[at + 1];
    this.mid = (frame[at + 2] << 8) | frame[at + 3];
    this.lo = (frame[at + 4] << 8) | frame[at + 5];
    this.generation = generation;
    this.entry = entry;
  }
}

/** One switch port as what is plugged into it sees it: send into the switch, receive from it. */
class SwitchPort implements NetPort {
  readonly counters = new PortCounters();
  /** The last source address learned through this port, and the last destination looked up. */
  readonly source = new AddressCache();
  readonly destination = new AddressCache();
  private handler: FrameHandler | undefined;
  private views: ViewCache | undefined;
  closed = false;

  constructor(
    private readonly sw: L2Switch,
    readonly name: string,
  ) {}

  send(frame: Uint8Array, meta: Offload): void {
    this.sendAt(frame, 0, frame.length, meta);
  }

  sendAt(bytes: Uint8Array, offset: number, length: number, meta: Offload): void {
    if (this.closed) {
      this.counters.drops++;
      return;
    }
    this.counters.countTx(length);
    this.sw.forward(this, bytes, offset, length, meta);
  }

  onReceive(handler: FrameHandler | undefined): void {
    this.handler = handler;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sw.remove(this);
  }

  /**
   * The frame that came in through this port as a view to hand on: the bytes themselves when
   * they are the frame, else a view from this port's cache (a driver's buffers come back over
   * and over, so a frame in one seen before costs no new view).
   */
  lend(bytes: Uint8Array, at: number, length: number): Uint8Array {
    if (at === 0 && length === bytes.length) return bytes;
    return (this.views ??= new ViewCache()).view(bytes, at, length);
  }

  /** The switch forwards a frame out of this port. */
  deliver(frame: Uint8Array, meta: Offload): void {
    if (this.handler === undefined) {
      this.counters.drops++;
      return;
    }
    this.counters.countRx(frame.length);
    this.handler(frame, meta);
  }
}

export class L2Switch {
  readonly name: string;
  private readonly ports: SwitchPort[] = [];
  /** MAC key → where it was last seen; Map order is refresh order, oldest first. */
  private readonly table = new Map<number, Learned>();
  private readonly ageingMs: number;
  private readonly clock: () => number;
  private readonly maxAddresses: number;
  private nextPort = 0;
  /** Bumped whenever an address enters or leaves the table, which is what invalidates the ports' AddressCaches. */
  private generation = 0;

  constructor(options: SwitchOptions = {}) {
    this.name = options.name ?? 'sw';
    this.ageingMs = options.ageingMs ?? 300_000;
    if (!(this.ageingMs > 0)) throw new RangeError(`switch ageing time ${this.ageingMs} ms is not positive`);
    this.clock = options.clock ?? burstClock;
    this.maxAddresses = options.maxAddresses ?? 4096;
    if (!Number.isInteger(this.maxAddresses) || this.maxAddresses < 1) {
      throw new RangeError(`switch address table size ${this.maxAddresses} is not a positive integer`);
    }
  }

  /** A new port; plug a device, a tunnel or a TAP into it (NetDevice's `port`, or patch()). */
  createPort(name = `p${this.nextPort}`): NetPort {
    this.nextPort++;
    const port = new SwitchPort(this, `${this.name}.${name}`);
    this.ports.push(port);
    return port;
  }

  /** Learned addresses that have not aged out: MAC (wire.ts macKey) → port name. */
  addresses(): Map<number, string> {
    const now = this.clock();
    const out = new Map<number, string>();
    for (const [mac, entry] of this.table) if (now - entry.seen < this.ageingMs) out.set(mac, entry.port.name);
    return out;
  }

  /**
   * A frame entered through `from`: the `length` bytes at `at` of `bytes`. Where it goes is
   * decided from its address bytes; a view of it is made only when some port receives it.
   */
  forward(from: SwitchPort, bytes: Uint8Array, at: number, length: number, meta: Offload): void {
    if (length < ETH_HLEN) {
      from.counters.drops++;
      return;
    }
    const now = this.clock();
    const src = at + 6;
    // A group address as source is bogus (802.1D never learns one).
    if (!isGroupMac(bytes, src)) {
      const cache = from.source;
      const known = cache.entry;
      // The source this port learned last, still in the table: only the time stamp to refresh.
      if (known !== undefined && known.port === from && now - known.ordered < REORDER_MS && cache.hit(bytes, src, this.generation)) known.seen = now;
      else cache.store(bytes, src, this.generation, this.learn(macKey(bytes, src), from, now));
    }
    if (!isGroupMac(bytes, at)) {
      const cache = from.destination;
      if (!cache.hit(bytes, at, this.generation)) cache.store(bytes, at, this.generation, this.table.get(macKey(bytes, at)));
      const entry = cache.entry;
      if (entry !== undefined && now - entry.seen < this.ageingMs) {
        // A frame for the port it came from is already where it belongs (802.1D filtering).
        if (entry.port === from) from.counters.drops++;
        else entry.port.deliver(from.lend(bytes, at, length), meta);
        return;
      }
    }
    // Flooded: to every other port, or nowhere when `from` is alone on the switch.
    const ports = this.ports;
    if (ports.length === 1 && ports[0] === from) return;
    const frame = from.lend(bytes, at, length);
    for (const port of ports) if (port !== from) port.deliver(frame, meta);
  }

  /** A port closed: it leaves the switch and the addresses learned on it are forgotten. */
  remove(port: SwitchPort): void {
    const i = this.ports.indexOf(port);
    if (i >= 0) this.ports.splice(i, 1);
    for (const [mac, entry] of this.table) if (entry.port === port) this.table.delete(mac);
    this.generation++;
  }

  /** Learn that `mac` is behind `port`; returns its entry. */
  private learn(mac: number, port: SwitchPort, now: number): Learned {
    const known = this.table.get(mac);
    if (known !== undefined) {
      known.seen = now;
      if (known.port === port && now - known.ordered < REORDER_MS) return known;
      // Moved to another port, or its place in the order is stale: re-insert at the end. The
      // entry stays the same object, so caches holding it see the move.
      known.port = port;
      known.ordered = now;
      this.table.delete(mac);
      this.table.set(mac, known);
      return known;
    }
    if (this.table.size >= this.maxAddresses) {
      const oldest = this.table.keys().next();
      if (!oldest.done) this.table.delete(oldest.value);
    }
    const entry: Learned = { port, seen: now, ordered: now };
    this.table.set(mac, entry);
    this.generation++;
    return entry;
  }
}
