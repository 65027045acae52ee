/**
 * A device and its driver in one process, joined by virtio-mmio: the form every unit test uses
 * and the one a JavaScript machine emulator would embed (its CPU taking the driver's place).
 */
import type { Logger } from 'pino';
import type { VirtioDevice } from '../../virtio/device.ts';
import { DmaPool } from '../../virtio/dma.ts';
import { GuestMemory } from '../../virtio/memory.ts';
import { MmioDevice } from './device.ts';
import { MmioDriverTransport } from './driver.ts';

export interface LoopbackOptions {
  /** Size of the guest memory, all of it available to the driver's DMA allocator. */
  readonly memoryBytes: number;
  readonly log?: Logger;
}

export interface Loopback {
  readonly memory: GuestMemory;
  readonly transport: MmioDriverTransport;
  readonly host: MmioDevice;
}

export function createLoopback(device: VirtioDevice, options: LoopbackOptions): Loopback {
  const { memoryBytes } = options;
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes <= 0) {
    throw new RangeError(`memoryBytes ${memoryBytes} is not a positive integer`);
  }
  const memory = GuestMemory.allocate(memoryBytes);
  // Interrupts reach the driver on a later turn of the event loop, never inside the device's
  // call stack, so device and driver cannot recurse into each other; one turn serves them all.
  let scheduled = false;
  const host = new MmioDevice(device, memory, {
    log: options.log,
    interrupt: (asserted) => {
      if (!asserted || scheduled) return;
      scheduled = true;
      setImmediate(() => {
        scheduled = false;
        transport.interrupt();
      });
    },
  });
  const transport = new MmioDriverTransport(host, memory, new DmaPool(memory, 0, memoryBytes));
  return { memory, transport, host };
}
