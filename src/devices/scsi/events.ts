/**
 * The event queue (§5.6.6.3): hot-plug and hot-unplug of LUNs (TRANSPORT_RESET with RESCAN or
 * REMOVED, VIRTIO_SCSI_F_HOTPLUG) and parameter changes (PARAM_CHANGE, VIRTIO_SCSI_F_CHANGE),
 * one 16-byte record per driver buffer. Events finding no buffer wait in a short backlog; one
 * dropped beyond it sets VIRTIO_SCSI_T_EVENTS_MISSED on the next event delivered (§5.6.6.3.1),
 * so the driver rescans everything.
 */
import type { DeviceContext } from '../../virtio/device.ts';
import { EventQueue, ONE_PER_BUFFER } from '../../virtio/event-queue.ts';
import { EVENTS_MISSED, EVENT_SIZE, type ScsiEvent, encodeEvent } from './wire.ts';

/** Events kept while the driver has no buffer posted. */
const BACKLOG = 64;

export class ScsiEvents {
  private readonly queue: EventQueue<Uint8Array>;
  private missed = false;

  /** `dropped` counts each event the full backlog had no room for. */
  constructor(ctx: DeviceContext, index: number, dropped: () => void) {
    this.queue = new EventQueue(ctx, index, {
      layout: ONE_PER_BUFFER,
      backlog: BACKLOG,
      overflow: 'drop',
      minBuffer: { bytes: EVENT_SIZE, rule: '§5.6.6.3: an event buffer holds a virtio_scsi_event' },
      onDrop: () => {
        this.missed = true;
        dropped();
      },
    });
  }

  offer(event: ScsiEvent): void {
    const flagged = this.missed ? { ...event, event: event.event | EVENTS_MISSED } : event;
    this.missed = false;
    this.queue.offer(encodeEvent(flagged));
  }

  kick(): void {
    this.queue.kick();
  }
}
