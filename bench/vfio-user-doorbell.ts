/**
 * `npm run bench -- vfio-user-doorbell`: the two ways a vfio-user server can receive virtio
 * doorbells, measured in one process without a guest.
 *
 *   message: the client forwards the guest's write to the notification structure as a posted
 *            REGION_WRITE; the server's socket wakes the event loop (what `paravirt serve
 *            --transport vfio-user` does).
 *   mapped:  the notification page is shared memory the guest writes directly (a sparse-mmap
 *            area); nothing wakes the server, so it polls the page, here as often as the event
 *            loop turns (setImmediate), the fastest a poll on the main thread can be.
 *
 * Each reports the median latency from the write to the device seeing it, and the server's CPU
 * time while no doorbell comes (1 s idle): the price the mapped page pays on every core-second.
 */
import { pino } from 'pino';
import { createMemfd } from '../src/native/memfd.ts';
import { Mapping } from '../src/native/mapping.ts';
import { socketPair } from '../src/native/unix-socket.ts';
import { closeFd } from '../src/native/fd.ts';
import { PciFunction } from '../src/transports/pci-device/function.ts';
import { ClientConnection } from '../src/transports/vfio-user/connection.ts';
import { Command, HEADER_SIZE, HeaderFlag } from '../src/transports/vfio-user/protocol.ts';
import { report, step } from './_report.ts';

const BENCH = 'vfio-user-doorbell';
const DOORBELLS = 20_000;
const IDLE_MS = 1000;

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1];

function message(id: number, command: number, payload: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const v = new DataView(out.buffer);
  v.setUint16(0, id, true);
  v.setUint16(2, command, true);
  v.setUint32(4, out.length, true);
  v.setUint32(8, flags, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** CPU microseconds this process used over `ms` of wall time with nothing to do but what runs. */
async function idleCpu(ms: number): Promise<number> {
  const before = process.cpuUsage();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const used = process.cpuUsage(before);
  return used.user + used.system;
}

async function viaMessages(): Promise<{ latencyUs: number; idleCpuPercent: number }> {
  let seen: (() => void) | undefined;
  const fn = new PciFunction({
    identity: { vendorId: 0x1af4, deviceId: 0x1044, subsystemVendorId: 0x1af4, subsystemId: 0x1044, revision: 1, classCode: 0xff0000 },
    bars: [{ size: 0x4000, read: (_o, d) => d.fill(0), write: () => seen?.() }],
    capabilities: [],
    interruptPin: 0,
  });
  const [client, server] = socketPair();
  const connection = new ClientConnection(server, { pci: fn, msixVectors: 1, attachInterrupts: () => {}, useMemory: () => {}, reset: () => {} }, pino({ level: 'silent' }));
  const version = new Uint8Array(4);
  client.send(message(0, Command.VERSION, version));
  const doorbell = new Uint8Array(18);
  const v = new DataView(doorbell.buffer);
  v.setBigUint64(0, 0x3000n, true);
  v.setUint32(8, 0, true);
  v.setUint32(12, 2, true);
  const latencies: number[] = [];
  for (let i = 0; i < DOORBELLS; i++) {
    const done = new Promise<void>((resolve) => (seen = resolve));
    const start = performance.now();
    client.send(message(i + 1, Command.REGION_WRITE, doorbell, HeaderFlag.NO_REPLY));
    await done;
    latencies.push((performance.now() - start) * 1000);
    // Drain the VERSION reply once; posted writes have none.
    if (i === 0) client.receive();
  }
  const idle = await idleCpu(IDLE_MS);
  client.close();
  await connection.close();
  return { latencyUs: median(latencies), idleCpuPercent: (100 * idle) / (IDLE_MS * 1000) };
}

async function viaMappedPage(): Promise<{ latencyUs: number; idleCpuPercent: number }> {
  const fd = createMemfd('notify', 4096);
  const guest = Mapping.shared(fd, 4096);
  const page = Mapping.shared(fd, 4096);
  closeFd(fd);
  const guestView = new DataView(guest.bytes.buffer, guest.bytes.byteOffset, 4096);
  const serverView = new DataView(page.bytes.buffer, page.bytes.byteOffset, 4096);
  let last = 0;
  let seen: (() => void) | undefined;
  let polling = true;
  // A guest writes the queue index, the same value each time; a counter stands in for "a new write".
  const poll = (): void => {
    const now = serverView.getUint32(0, true);
    if (now !== last) {
      last = now;
      seen?.();
    }
    if (polling) setImmediate(poll);
  };
  setImmediate(poll);
  const latencies: number[] = [];
  for (let i = 1; i <= DOORBELLS; i++) {
    const done = new Promise<void>((resolve) => (seen = resolve));
    const start = performance.now();
    guestView.setUint32(0, i, true);
    await done;
    latencies.push((performance.now() - start) * 1000);
  }
  const idle = await idleCpu(IDLE_MS);
  polling = false;
  guest.unmap();
  page.unmap();
  return { latencyUs: median(latencies), idleCpuPercent: (100 * idle) / (IDLE_MS * 1000) };
}

export async function main(): Promise<void> {
  step('doorbells as REGION_WRITE messages');
  const m = await viaMessages();
  step('doorbells on a polled mapped page');
  const p = await viaMappedPage();
  const context = { doorbells: DOORBELLS, idleMs: IDLE_MS };
  report(BENCH, 'message_latency_us', Math.round(m.latencyUs * 10) / 10, 'us', context);
  report(BENCH, 'message_idle_cpu', Math.round(m.idleCpuPercent * 10) / 10, '%', context);
  report(BENCH, 'mapped_poll_latency_us', Math.round(p.latencyUs * 10) / 10, 'us', context);
  report(BENCH, 'mapped_poll_idle_cpu', Math.round(p.idleCpuPercent * 10) / 10, '%', context);
}
