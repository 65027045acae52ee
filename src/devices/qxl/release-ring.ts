/**
 * The release ring (device produces, driver consumes): how the device hands commands back.
 * Released commands are chained through their release_info — its id is read, then the same
 * eight bytes become `next` — into the item at prod, which is published at once unless the ring
 * is full; then the chain grows until the driver makes room and the next release or
 * FLUSH_RELEASE publishes it. One item is always the device's own, where the chain grows.
 * QEMU's interface_release_resource and qxl_push_free_res, without QEMU's batching.
 */
import { RELEASE_RING_SIZE, RingHeader } from './wire.ts';

/** Eight bytes of guest memory: a command's release_info. */
export interface ReleaseInfo {
  readonly view: DataView;
  readonly offset: number;
}

export class ReleaseRing {
  /** The release_info ending the chain that waits in the item at prod. */
  private last: ReleaseInfo | undefined;

  constructor(
    /** The RAM BAR. */
    private readonly view: DataView,
    /** Offset of the ring's header in it. */
    private readonly at: number,
    /** The driver asked to hear of a published item (prod reached notify_on_prod). */
    private readonly notify: () => void,
  ) {}

  reset(): void {
    this.last = undefined;
  }

  private u32(field: number): number {
    return this.view.getUint32(this.at + field, true);
  }

  private item(index: number): number {
    return this.at + RingHeader.SIZE + (index % RELEASE_RING_SIZE) * 8;
  }

  /** Hand back the command whose release_info is `info`. */
  release(info: ReleaseInfo): void {
    const id = info.view.getBigUint64(info.offset, true);
    if (this.last === undefined) this.view.setBigUint64(this.item(this.u32(RingHeader.PROD)), id, true);
    else this.last.view.setBigUint64(this.last.offset, id, true);
    info.view.setBigUint64(info.offset, 0n, true);
    this.last = info;
    this.push();
  }

  /** Publish the waiting chain if the ring has room. */
  push(): void {
    if (this.last === undefined) return;
    const prod = this.u32(RingHeader.PROD);
    if (((prod - this.u32(RingHeader.CONS) + 1) >>> 0) >= RELEASE_RING_SIZE) return;
    const next = (prod + 1) >>> 0;
    this.view.setUint32(this.at + RingHeader.PROD, next, true);
    this.view.setBigUint64(this.item(next), 0n, true);
    this.last = undefined;
    if (next === this.u32(RingHeader.NOTIFY_ON_PROD)) this.notify();
  }
}
