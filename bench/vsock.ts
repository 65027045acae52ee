/**
 * Stream throughput through vsock beside a Unix-socket copy on the same machine: paravirt's vsock
 * driver over the vhost-user front-end against `paravirt serve vsock` (a separate process), one
 * connection to a host program on PATH_P (hybrid vsock), guest to host; and the same bytes from
 * one host program to another through a Unix socket. Alternated, best of 3 each, so a burst of
 * load on the machine hits both. The ratio is the point: vsock adds a process hop, the ring and
 * credit round trips.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { VsockDriver } from '../src/devices/vsock/driver.ts';
import { VhostUserFrontend } from '../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../src/virtio/constants.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';
import { readAll, writeAll } from '../test/lab/streams.ts';
import { report, step } from './_report.ts';

export const deadlineSeconds = 120;

const PARAVIRT = fileURLToPath(new URL('../bin/paravirt.js', import.meta.url));
const BYTES = 16 << 20;
const ROUNDS = 3;

/** A listener on `path` and its next connection. */
async function listener(path: string): Promise<{ next(): Promise<Socket>; close(): void }> {
  const server = createServer({ allowHalfOpen: true });
  server.listen(path);
  await once(server, 'listening');
  return { next: async () => ((await once(server, 'connection')) as [Socket])[0], close: () => server.close() };
}

/** Bytes per second from `writer` to `reader`, from the first write to the last byte read. */
async function copy(writer: Duplex, reader: Duplex, data: Uint8Array): Promise<number> {
  const start = performance.now();
  const [got] = await Promise.all([readAll(reader), writeAll(writer, data)]);
  if (got.length !== data.length) throw new Error(`copied ${got.length} of ${data.length} bytes`);
  return data.length / ((performance.now() - start) / 1000);
}

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-vsock-'));
  const backend = new PeerProcess('paravirt serve vsock', [
    process.execPath, PARAVIRT, 'serve', 'vsock', '--socket-path', join(dir, 'vhost.sock'), '--guest-cid', '3', '--uds-path', join(dir, 'v.sock'),
  ], { textStdout: true });
  let driver: VsockDriver | undefined;
  try {
    step('starting paravirt serve vsock');
    await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
    const log = pino({ level: 'warn' });
    driver = await VsockDriver.open(await VhostUserFrontend.connect(join(dir, 'vhost.sock'), { deviceId: DeviceId.VSOCK, log }), { log });
    const vsockPort = await listener(join(dir, 'v.sock_5000'));
    const unixPort = await listener(join(dir, 'plain.sock'));
    const data = new Uint8Array(BYTES).fill(0x5a);
    const best = { vsock: 0, unix: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      step(`round ${round + 1}: ${BYTES} bytes through vsock`);
      const host = vsockPort.next();
      const guest = await driver.connect(5000);
      best.vsock = Math.max(best.vsock, await copy(guest, await host, data));
      step(`round ${round + 1}: ${BYTES} bytes through a Unix socket`);
      const server = unixPort.next();
      const client = connect({ path: join(dir, 'plain.sock'), allowHalfOpen: true });
      best.unix = Math.max(best.unix, await copy(client, await server, data));
      client.destroy();
    }
    const mib = (rate: number): number => Math.round((rate / 2 ** 20) * 10) / 10;
    report('vsock', 'guest_to_host_throughput', mib(best.vsock), 'MiB/s', { peer: 'paravirt vsock over vhost-user', bytes: BYTES, best_of: ROUNDS });
    report('vsock', 'unix_socket_copy_throughput', mib(best.unix), 'MiB/s', { peer: 'Unix socket', bytes: BYTES, best_of: ROUNDS });
    report('vsock', 'vsock_over_unix_socket', Math.round((best.vsock / best.unix) * 1000) / 1000, 'ratio');
    vsockPort.close();
    unixPort.close();
  } finally {
    await driver?.close();
    await backend.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
