/**
 * `paravirt serve blk --read-only` for bench/queue-thread.ts, one device per socket, served
 * either all on the main thread or each in a worker thread of its own:
 *
 *     node --import tsx bench/_blk-serve-threads.ts main|worker POLL_US IMAGE SOCKET...
 *
 * In `worker` mode the worker runs the whole vhost-user back-end of its device (socket, memory
 * table mapped from the front-end's fds, kick eventfds on the worker's own epoll, queue server,
 * call eventfd writes) and the main thread only starts and stops workers. For the data plane
 * this is what a queue thread with the control plane left on the main thread would run per
 * request: the hand-off between the two happens only on ring start/stop and memory changes,
 * none of which a benchmark round contains. Prints "listening" once every socket accepts a
 * front-end; stops on SIGTERM.
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { pino } from 'pino';
import { vhostUserBlkDevice } from '../src/devices/blk/device.ts';
import { FileBackend } from '../src/storage/file-backend.ts';
import { IoThreads } from '../src/storage/io-thread.ts';
import { BackendServer } from '../src/transports/vhost-user/backend-server.ts';

interface DeviceData {
  readonly image: string;
  readonly socketPath: string;
  readonly pollMicros: number;
}

/**
 * How long the device's second I/O thread may idle before it stops: longer than the benchmark.
 * Rounds alternate between back-ends, so each sits idle for longer than the 5 s after which
 * `paravirt serve` stops threads beyond the first; restarted from source (under tsx) at a load of
 * 12, a thread took seconds to boot, and a round spent getting it back measured that instead.
 */
const IO_THREADS_IDLE_MS = 10 * 60 * 1000;
const IO_THREADS = 2;

/** Serve one device until `stop` resolves. */
async function serve({ image, socketPath, pollMicros }: DeviceData, listening: () => void, stop: Promise<void>): Promise<void> {
  const threads = new IoThreads(IO_THREADS, IO_THREADS_IDLE_MS);
  const backend = await FileBackend.open(image, { readOnly: true, sharedThreads: threads });
  const server = BackendServer.listen(vhostUserBlkDevice(backend, { readOnly: true }), { socketPath }, pino({ level: 'warn' }), { pollMicros });
  listening();
  await stop;
  await server.close();
  await backend.close();
  await threads.close();
}

/** Run from source: the worker needs the TypeScript loader first (see src/storage/io-thread.ts). */
const BOOT = new URL('../src/storage/io-thread-boot.mjs', import.meta.url);

if (isMainThread) {
  const [mode, pollUs, image, ...sockets] = process.argv.slice(2);
  if ((mode !== 'main' && mode !== 'worker') || sockets.length === 0) {
    throw new Error('usage: _blk-serve-threads.ts main|worker POLL_US IMAGE SOCKET...');
  }
  const devices: DeviceData[] = sockets.map((socketPath) => ({ image, socketPath, pollMicros: Number(pollUs) }));
  const stopped = new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  if (mode === 'main') {
    let waiting = devices.length;
    const listening = (): void => {
      if (--waiting === 0) console.log('listening');
    };
    await Promise.all(devices.map((d) => serve(d, listening, stopped)));
  } else {
    const workers = devices.map((d) => new Worker(BOOT, { workerData: { ...d, entry: import.meta.url } }));
    await Promise.all(workers.map((w) => new Promise((resolve, reject) => w.once('message', resolve).once('error', reject))));
    console.log('listening');
    await stopped;
    for (const w of workers) w.postMessage('stop');
    await Promise.all(workers.map((w) => new Promise((resolve) => w.once('exit', resolve))));
  }
} else {
  const port = parentPort!;
  const stop = new Promise<void>((resolve) => port.once('message', () => resolve()));
  await serve(workerData as DeviceData, () => port.postMessage('listening'), stop);
  port.close();
}
