/**
 * The devices `paravirt serve` offers, built the way a vhost-user front-end expects them.
 */
import { BlkDevice } from '../devices/blk/device.ts';
import type { BlockBackend } from '../devices/blk/backend.ts';

/** QEMU's vhost-user-blk default queue-size property. */
export const VHOST_USER_BLK_QUEUE_SIZE = 128;

export interface VhostUserBlkOptions {
  readonly queues?: number;
  readonly readOnly?: boolean;
  /** The ring size the front-end will use (QEMU's queue-size property). */
  readonly queueSize?: number;
}

/**
 * A BlkDevice for a vhost-user front-end. The front-end, not the device, picks the ring size,
 * and the device's seg_max (queue size - 2) must let a request's chain fit in that ring: a
 * Linux driver builds indirect tables as long as seg_max allows, and a chain longer than the
 * queue breaks §2.7.5.3.1. So the device is sized to the front-end's queue, not the largest.
 */
export function vhostUserBlkDevice(backend: BlockBackend, options: VhostUserBlkOptions = {}): BlkDevice {
  return new BlkDevice({
    backend,
    queues: options.queues ?? 1,
    readOnly: options.readOnly === true,
    queueSize: options.queueSize ?? VHOST_USER_BLK_QUEUE_SIZE,
  });
}
