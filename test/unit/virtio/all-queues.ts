/**
 * For tests whose device is their own honest one: set up every queue it reports. Drivers never
 * do this (a device's queue count is its word, driver-core.ts DriverOptions.queues).
 */
import type { QueuePlan } from '../../../src/virtio/driver-core.ts';

export const allQueues = (plan: QueuePlan): Promise<number> => plan.deviceQueues();
