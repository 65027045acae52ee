/**
 * A TAP interface as a NetPort: frames sent into the port appear on the host interface, frames
 * the host sends out of the interface arrive at the port. Each frame crosses with its 12-byte
 * virtio_net_hdr (IFF_VNET_HDR, TUNSETVNETHDRSZ), so partial checksums and GSO frames pass
 * through untouched; which ones the kernel may hand back is chosen with `offloads`.
 *
 * Reading is driven by readiness (uv_poll): no thread waits, and each wake-up drains the
 * descriptor. Creating the interface needs CAP_NET_ADMIN.
 */
import { closeFd } from '../../native/fd.ts';
import { type Watcher, watch } from '../../native/readiness.ts';
import { TunOffload, openTap, readTap, setTapOffload, writeTap } from '../../native/tun.ts';
import { type FrameHandler, type NetPort, PortCounters } from './port.ts';
import { ETH_HLEN, MAX_GSO_FRAME, NET_HDR_SIZE, type Offload, decodeOffload, encodeNetHeader } from './wire.ts';

export interface TapOptions {
  /** Interface name (default: the kernel picks tapN). */
  readonly name?: string;
  /**
   * Offloads the kernel may leave to the receiver (default none: complete frames only). Turn
   * them on when every device behind the port negotiated the matching GUEST_* features.
   */
  readonly offloads?: { readonly checksum?: boolean; readonly segmentation?: boolean };
}

export class TapPort implements NetPort {
  readonly counters = new PortCounters();
  private handler: FrameHandler | undefined;
  private watcher: Watcher | undefined;
  private readonly buffer = new Uint8Array(NET_HDR_SIZE + MAX_GSO_FRAME);

  private constructor(
    private readonly fd: number,
    /** The host interface name. */
    readonly name: string,
  ) {
    this.watcher = watch(fd, { readable: () => this.drain(), error: () => this.close() });
  }

  static open(options: TapOptions = {}): TapPort {
    const tap = openTap(options.name ?? '', NET_HDR_SIZE);
    try {
      const o = options.offloads ?? {};
      let bits = 0;
      if (o.checksum === true || o.segmentation === true) bits |= TunOffload.CSUM;
      if (o.segmentation === true) bits |= TunOffload.TSO4 | TunOffload.TSO6 | TunOffload.TSO_ECN | TunOffload.UFO;
      setTapOffload(tap.fd, bits);
      return new TapPort(tap.fd, tap.name);
    } catch (err) {
      closeFd(tap.fd);
      throw err;
    }
  }

  send(frame: Uint8Array, meta: Offload): void {
    if (this.watcher === undefined || frame.length > MAX_GSO_FRAME) {
      this.counters.drops++;
      return;
    }
    const packet = new Uint8Array(NET_HDR_SIZE + frame.length);
    encodeNetHeader(meta, 0, packet);
    packet.set(frame, NET_HDR_SIZE);
    if (writeTap(this.fd, packet)) this.counters.countTx(frame.length);
    else this.counters.drops++;
  }

  onReceive(handler: FrameHandler | undefined): void {
    this.handler = handler;
  }

  close(): void {
    if (this.watcher === undefined) return;
    this.watcher.close();
    this.watcher = undefined;
    closeFd(this.fd);
  }

  /** Read every frame the kernel has queued (readiness is level-triggered: leftovers would wake us again). */
  private drain(): void {
    for (;;) {
      if (this.watcher === undefined) return;
      let n: number;
      try {
        n = readTap(this.fd, this.buffer);
      } catch {
        // The interface is gone (deleted under us): the port is dead, not the process.
        this.close();
        return;
      }
      if (n < 0) return;
      if (n < NET_HDR_SIZE + ETH_HLEN || this.handler === undefined) {
        this.counters.drops++;
        continue;
      }
      const frame = this.buffer.slice(NET_HDR_SIZE, n);
      this.counters.countRx(frame.length);
      this.handler(frame, decodeOffload(this.buffer));
    }
  }
}
