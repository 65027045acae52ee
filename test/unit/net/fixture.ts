/** Frames and connected device/driver pairs for the virtio-net tests. */
import { pino } from 'pino';
import { NetDevice, type NetDeviceOptions } from '../../../src/devices/net/device.ts';
import { NetDriver, type NetDriverOptions, type ReceivedFrame } from '../../../src/devices/net/driver.ts';
import type { NetPort } from '../../../src/devices/net/port.ts';
import { parseMac } from '../../../src/devices/net/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';

/** Log lines written, as JSON text. */
export const logged: string[] = [];
export const log = pino({ level: 'warn' }, { write: (line: string) => void logged.push(line) });

export const MAC_A = '52:54:00:00:00:0a';
export const MAC_B = '52:54:00:00:00:0b';
export const BROADCAST = 'ff:ff:ff:ff:ff:ff';

/** An Ethernet frame: dst, src, EtherType 0x88b5 (local experimental), `length` bytes in all, a pattern from `seed`. */
export function frame(dst: string, src: string, length = 64, seed = 0): Uint8Array {
  const f = new Uint8Array(length);
  f.set(parseMac(dst), 0);
  f.set(parseMac(src), 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  for (let i = 14; i < length; i++) f[i] = (i * 7 + seed) & 0xff;
  return f;
}

export interface Station {
  readonly dev: NetDevice;
  readonly drv: NetDriver;
}

/** A NetDevice on `port`, its NetDriver over an mmio loopback. */
export async function station(
  port: NetPort,
  device: Omit<NetDeviceOptions, 'port'> = {},
  driver: NetDriverOptions = {},
): Promise<Station> {
  const dev = new NetDevice({ port, ...device });
  const { transport } = createLoopback(dev, { memoryBytes: 16 << 20, log });
  const drv = await NetDriver.open(transport, { log, ...driver });
  return { dev, drv };
}

/** The next frame the driver receives. */
export async function nextFrame(drv: NetDriver): Promise<ReceivedFrame> {
  const f = await drv.next();
  if (f === undefined) throw new Error('the driver closed before a frame arrived');
  return f;
}

/**
 * Run event-loop turns until `done()` holds (loopback interrupts arrive on setImmediate); fails
 * after `turns` turns, when the condition is never going to come.
 */
export async function until(done: () => boolean, turns = 200): Promise<void> {
  for (let i = 0; i < turns && !done(); i++) await new Promise<void>((resolve) => setImmediate(resolve));
  if (!done()) throw new Error(`condition not reached in ${turns} event-loop turns`);
}
