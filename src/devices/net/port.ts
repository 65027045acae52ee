/**
 * What a virtio-net device is plugged into: a NetPort carries Ethernet frames (without the
 * virtio_net_hdr, whose offload fields travel alongside as `Offload`) both ways. Switch ports,
 * UDP tunnels, TAP interfaces and pcap taps all implement it, so a device never knows what it
 * is connected to, and `patch` joins any two of them like a cable.
 *
 * A frame is lent for the duration of the call, not given: it may be a view of a driver's transmit
 * buffer, which goes back to the driver (and is written again) once send() returns, so that a
 * frame crosses the switch from one guest's buffer into another's without a copy in between.
 * Nobody writes to a frame they were handed; a receiver that keeps one past the call (a backlog
 * waiting for receive buffers, an asynchronous socket write) copies it first.
 */
import { doubleCounters } from '../../virtio/counters.ts';
import type { Offload } from './wire.ts';

/** Receives one frame and its offload metadata. */
export type FrameHandler = (frame: Uint8Array, meta: Offload) => void;

/**
 * Counters of one port, seen from the side that uses it: `tx` is what it was given to send,
 * `rx` what it handed to its receive handler, `drops` what it discarded either way.
 */
export class PortCounters {
  txPackets = 0;
  txBytes = 0;
  rxPackets = 0;
  rxBytes = 0;
  drops = 0;

  constructor() {
    // Doubles from the start, so the data path is not deoptimized when they grow (virtio/counters.ts).
    doubleCounters(this);
  }

  countTx(bytes: number): void {
    this.txPackets++;
    this.txBytes += bytes;
  }

  countRx(bytes: number): void {
    this.rxPackets++;
    this.rxBytes += bytes;
  }
}

export interface NetPort {
  /** For logs and counters, e.g. "sw0.p1". */
  readonly name: string;
  /**
   * Carry `frame` out of this port; the frame is valid only during the call (see above). Never
   * throws for a frame it cannot carry: it drops and counts it.
   */
  send(frame: Uint8Array, meta: Offload): void;
  /**
   * Optional, for a port that decides where a frame goes from its bytes (the switch): the same
   * as `send` for the `length` bytes at `offset` of `bytes` (lent the same way), without the
   * caller making a view of them; the port makes one only for a receiver it hands the frame to.
   */
  sendAt?(bytes: Uint8Array, offset: number, length: number, meta: Offload): void;
  /** Frames arriving at this port go to `handler`; undefined detaches (arrivals are then dropped and counted). */
  onReceive(handler: FrameHandler | undefined): void;
  readonly counters: PortCounters;
  /** Release what the port holds (sockets, descriptors); sends afterwards are dropped. */
  close(): void;
}

/**
 * Join two ports like a cable: what arrives at one is sent out of the other. The topology must
 * stay loop-free (there is no spanning tree protocol): a loop of patches floods forever.
 */
export function patch(a: NetPort, b: NetPort): void {
  a.onReceive((frame, meta) => b.send(frame, meta));
  b.onReceive((frame, meta) => a.send(frame, meta));
}

/** One end of a Cable. */
class CableEnd implements NetPort {
  readonly counters = new PortCounters();
  peer: CableEnd | undefined;
  private handler: FrameHandler | undefined;
  private closed = false;

  constructor(readonly name: string) {}

  send(frame: Uint8Array, meta: Offload): void {
    const peer = this.peer;
    if (this.closed || peer === undefined || peer.closed) {
      this.counters.drops++;
      return;
    }
    this.counters.countTx(frame.length);
    peer.deliver(frame, meta);
  }

  onReceive(handler: FrameHandler | undefined): void {
    this.handler = handler;
  }

  close(): void {
    this.closed = true;
  }

  private deliver(frame: Uint8Array, meta: Offload): void {
    if (this.handler === undefined) {
      this.counters.drops++;
      return;
    }
    this.counters.countRx(frame.length);
    this.handler(frame, meta);
  }
}

/** Two ports joined back to back: what one sends, the other receives (synchronously). */
export function createCable(name = 'cable'): [NetPort, NetPort] {
  const a = new CableEnd(`${name}.a`);
  const b = new CableEnd(`${name}.b`);
  a.peer = b;
  b.peer = a;
  return [a, b];
}
