/**
 * virtio-net over in-process mmio loopbacks: driver A → device A → learning switch → device B
 * → driver B, with 64-byte and 1500-byte frames, split and packed rings. 32 sends are kept in
 * flight; the receiver takes frames as they arrive. Reports frames delivered to driver B per
 * second (and per CPU-second, steadier on a shared machine) and what was dropped on the way.
 */
import { report, step } from './_report.ts';
import { NetDevice } from '../src/devices/net/device.ts';
import { NetDriver } from '../src/devices/net/driver.ts';
import { L2Switch } from '../src/devices/net/switch.ts';
import { parseMac } from '../src/devices/net/wire.ts';
import { createLoopback } from '../src/transports/mmio/loopback.ts';

const DEPTH = 32;
const WARMUP_MS = 300;
const MEASURE_MS = 2000;
const MAC_A = '52:54:00:00:00:0a';
const MAC_B = '52:54:00:00:00:0b';

async function open(sw: L2Switch, mac: string, packed: boolean): Promise<{ dev: NetDevice; drv: NetDriver }> {
  const dev = new NetDevice({ port: sw.createPort(), mac });
  const { transport } = createLoopback(dev, { memoryBytes: 16 << 20 });
  return { dev, drv: await NetDriver.open(transport, { packed }) };
}

async function run(size: number, packed: boolean): Promise<void> {
  step(`sending ${size} B frames over the ${packed ? 'packed' : 'split'} ring`);
  const sw = new L2Switch();
  const a = await open(sw, MAC_A, packed);
  const b = await open(sw, MAC_B, packed);
  const frame = new Uint8Array(size);
  frame.set(parseMac(MAC_B), 0);
  frame.set(parseMac(MAC_A), 6);
  frame[12] = 0x88;
  frame[13] = 0xb5;

  let received = 0;
  let receiving = true;
  const receiver = (async () => {
    while (receiving) {
      if ((await b.drv.next()) === undefined) return;
      received++;
    }
  })();
  let stopAt = 0;
  const sender = async (): Promise<void> => {
    while (performance.now() < stopAt) await a.drv.send(frame);
  };
  const phase = async (ms: number): Promise<{ frames: number; seconds: number; cpuSeconds: number }> => {
    const first = received;
    const start = performance.now();
    const cpu = process.cpuUsage();
    stopAt = start + ms;
    await Promise.all(Array.from({ length: DEPTH }, sender));
    const used = process.cpuUsage(cpu);
    return { frames: received - first, seconds: (performance.now() - start) / 1000, cpuSeconds: (used.user + used.system) / 1e6 };
  };

  await phase(WARMUP_MS);
  const { frames, seconds, cpuSeconds } = await phase(MEASURE_MS);
  receiving = false;
  await a.drv.close();
  await b.drv.close();
  await receiver;
  const ring = packed ? 'packed' : 'split';
  report('net-loopback', `frames_${size}b_${ring}`, Math.round(frames / seconds), 'frames/s', {
    frames,
    seconds,
    frames_per_cpu_second: Math.round(frames / cpuSeconds),
    megabits_per_second: Number(((frames * size * 8) / seconds / 1e6).toFixed(1)),
    device_drops: b.dev.traffic.dropped,
    driver_inbox_drops: b.drv.counters.rxInboxFull,
  });
}

export async function main(): Promise<void> {
  for (const size of [64, 1500]) {
    for (const packed of [false, true]) await run(size, packed);
  }
}
