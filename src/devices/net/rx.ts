/**
 * One receiveq of a virtio-net device (§5.1.6.3-4): frames from the network are written into
 * the buffers the driver posted, a virtio_net_hdr first. The queue is an EventQueue
 * (event-queue.ts): a frame is written only once the held buffers can take all of it, and frames
 * that find no buffer wait in a bounded backlog, past which they are dropped and counted, so a
 * driver that stops posting buffers costs the device a fixed amount of memory.
 *
 * Without MRG_RXBUF a frame goes into one buffer; with it, into as many as it needs, every one
 * but the last filled completely, and num_buffers in the header says how many (§5.1.6.4.1).
 */
import type { ChainWriter } from '../../virtio/chain-io.ts';
import type { DeviceContext } from '../../virtio/device.ts';
import { type EventLayout, EventQueue, type Fit, type HeldBuffers } from '../../virtio/event-queue.ts';
import type { NetCounters } from './counters.ts';
import type { Deliverable } from './offload.ts';
import { NET_HDR_SIZE, encodeNetHeader } from './wire.ts';

/** How a frame goes into receive buffers, with or without MRG_RXBUF. */
class FrameLayout implements EventLayout<Deliverable> {
  private readonly header = new Uint8Array(NET_HDR_SIZE);

  constructor(
    private readonly mergeable: boolean,
    private readonly counters: NetCounters,
  ) {}

  fit({ frame }: Deliverable, held: HeldBuffers): Fit {
    const need = NET_HDR_SIZE + frame.length;
    if (!this.mergeable) return held.writable(0) >= need ? 1 : 'never';
    if (held.bytes < need) return 'more';
    let count = 1;
    for (let bytes = held.writable(0); bytes < need; count++) bytes += held.writable(count);
    return count;
  }

  write({ frame, meta }: Deliverable, writers: readonly ChainWriter[]): undefined {
    encodeNetHeader(meta, writers.length, this.header);
    writers[0].write(this.header);
    if (writers.length === 1) writers[0].write(frame);
    else for (let i = 0, at = 0; i < writers.length; i++) at += writers[i].write(frame.subarray(at));
    this.counters.rxPackets++;
    this.counters.rxBytes += frame.length;
    return undefined;
  }
}

/** A receive queue: frames offered with their offload metadata go to the driver. */
export type ReceiveQueue = EventQueue<Deliverable>;

export function receiveQueue(ctx: DeviceContext, index: number, mergeable: boolean, backlog: number, counters: NetCounters): ReceiveQueue {
  return new EventQueue(ctx, index, {
    layout: new FrameLayout(mergeable, counters),
    backlog,
    overflow: 'drop',
    // Frames arrive in bursts (another queue's drain forwarded through the switch): one used-ring
    // publish and at most one interrupt per burst.
    burst: true,
    // §5.1.6.3.1: a receive buffer MUST hold at least the header. One that cannot is a broken
    // driver (QEMU marks the device broken too).
    minBuffer: { bytes: NET_HDR_SIZE, rule: 'receive buffer too small' },
    // Without MRG_RXBUF the posted buffer is smaller than the frame; with it, the whole ring is.
    onDrop: (_, reason) => counters.drop(reason === 'noBuffer' ? 'noBuffer' : 'bufferTooSmall'),
    // A frame is lent (port.ts): one that finds buffers goes straight from the sender's buffer
    // into them; only one that must wait for the driver is copied.
    retain: ({ frame, meta }) => ({ frame: frame.slice(), meta }),
  });
}
