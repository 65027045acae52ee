/**
 * One receiveq of a virtio-net device (§5.1.6.3-4): frames from the network are written into
 * the buffers the driver posted, a virtio_net_hdr first.
 *
 * Buffers are popped ahead of need and held: a frame is written only once the held buffers can
 * take all of it, so a frame is never half-written and no popped buffer has to be given back.
 * Without MRG_RXBUF a frame goes into one buffer; with it, into as many as it needs, every one
 * but the last filled completely, and num_buffers in the header says how many (§5.1.6.4.1).
 *
 * Frames that find no buffer wait in a backlog of bounded length; past it they are dropped and
 * counted, so a driver that stops posting buffers costs the device a fixed amount of memory.
 */
import { ChainWriter } from '../../virtio/chain-io.ts';
import type { DeviceContext } from '../../virtio/device.ts';
import { type DescriptorChain, type DeviceQueue, VirtqueueError } from '../../virtio/queue.ts';
import type { NetCounters } from './counters.ts';
import { NET_HDR_SIZE, type Offload, encodeNetHeader } from './wire.ts';

interface Waiting {
  readonly frame: Uint8Array;
  readonly meta: Offload;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

export class ReceiveQueue {
  /** Buffers popped and not yet used, oldest first, all from `heldFrom`. */
  private held: DescriptorChain[] = [];
  private heldBytes = 0;
  private heldFrom: DeviceQueue | undefined;
  /** Frames waiting for buffers, oldest first; short (bounded by backlogLimit), so shift() is cheap. */
  private readonly backlog: Waiting[] = [];
  private draining = false;
  /** Buffers pushed by the current drain, published at its end. */
  private pushed = 0;
  private readonly header = new Uint8Array(NET_HDR_SIZE);

  constructor(
    private readonly ctx: DeviceContext,
    readonly index: number,
    private readonly mergeable: boolean,
    private readonly backlogLimit: number,
    private readonly counters: NetCounters,
  ) {}

  /** Frames waiting for the driver to post buffers. */
  get waiting(): number {
    return this.backlog.length;
  }

  /** Queue a frame for the driver and write what fits now. */
  offer(frame: Uint8Array, meta: Offload): void {
    if (this.waiting >= this.backlogLimit) {
      this.counters.drop('noBuffer');
      return;
    }
    this.backlog.push({ frame, meta });
    this.drain();
  }

  /** The driver posted buffers (a kick on this queue). */
  kick(): void {
    this.drain();
  }

  private drain(): void {
    const queue = this.ctx.queue(this.index);
    if (queue === undefined || this.draining) return;
    if (queue !== this.heldFrom) this.forgetHeld(queue);
    this.draining = true;
    this.pushed = 0;
    try {
      while (this.backlog.length > 0) {
        const { frame, meta } = this.backlog[0];
        const need = NET_HDR_SIZE + frame.length;
        const ready = this.gather(queue, need);
        if (ready === 'wait') break;
        this.backlog.shift();
        if (ready === 'never') {
          this.counters.drop('bufferTooSmall');
          continue;
        }
        this.place(queue, frame, meta, need);
      }
      if (this.pushed > 0 && queue.publish()) this.ctx.notifyQueue(this.index);
    } catch (err) {
      // A ring fault: the queue is dead until reset, and nothing held can be returned.
      this.forgetHeld(undefined);
      this.backlog.length = 0;
      this.ctx.fail(this.index, asError(err));
    } finally {
      this.draining = false;
    }
  }

  /**
   * Pop until the held buffers can take `need` bytes: 'ready', 'wait' when the driver has no
   * more buffers now (notifications are on, its next kick resumes), or 'never' when even a full
   * ring of its buffers could not hold the frame.
   */
  private gather(queue: DeviceQueue, need: number): 'ready' | 'wait' | 'never' {
    for (;;) {
      if (this.held.length > 0) {
        if (!this.mergeable) return this.held[0].writableLength >= need ? 'ready' : 'never';
        if (this.heldBytes >= need) return 'ready';
        if (this.held.length >= queue.size) return 'never';
      }
      const chain = queue.pop();
      if (chain === null) {
        // §2.7.10: buffers made available before notifications were re-enabled are popped now.
        if (queue.enableNotifications()) continue;
        return 'wait';
      }
      queue.disableNotifications();
      // §5.1.6.3.1: a receive buffer MUST hold at least the header. One that cannot is a broken
      // driver (QEMU marks the device broken too); returning it unused would also overtake the
      // held buffers, which VIRTIO_F_IN_ORDER forbids.
      if (chain.writableLength < NET_HDR_SIZE) {
        throw new VirtqueueError('receive buffer too small', `${chain.writableLength} writable bytes cannot hold the ${NET_HDR_SIZE}-byte virtio_net_hdr`);
      }
      this.held.push(chain);
      this.heldBytes += chain.writableLength;
    }
  }

  /** Write header and frame into the first held buffers. */
  private place(queue: DeviceQueue, frame: Uint8Array, meta: Offload, need: number): void {
    let count = 1;
    for (let bytes = this.held[0].writableLength; bytes < need; count++) bytes += this.held[count].writableLength;
    encodeNetHeader(meta, count, this.header);
    let at = 0;
    for (let i = 0; i < count; i++) {
      const chain = this.held[i];
      const writer = new ChainWriter(chain);
      if (i === 0) writer.write(this.header);
      at += writer.write(frame.subarray(at));
      queue.push(chain, writer.written);
      this.heldBytes -= chain.writableLength;
    }
    this.held.splice(0, count);
    this.pushed += count;
    this.counters.rxPackets++;
    this.counters.rxBytes += frame.length;
  }

  /** Drop held buffers of a queue that is gone (reset or failed): they must not be pushed. */
  private forgetHeld(queue: DeviceQueue | undefined): void {
    this.held = [];
    this.heldBytes = 0;
    this.heldFrom = queue;
  }
}
