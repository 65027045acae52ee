/**
 * Wake-up latency of the readiness mechanisms src/native/readiness.ts chose between: from a
 * write on one descriptor to the JavaScript callback that sees it readable, one at a time.
 *   - uv_poll on an eventfd (koffi.node.poll; what readiness.ts uses),
 *   - uv_poll on a Unix socket,
 *   - Node's own net.Socket over the same kind of Unix socket (works for sockets only:
 *     libuv cannot wrap an eventfd in a stream handle, so it cannot be the general answer),
 *   - a libuv thread-pool round trip (fdatasync of a memfd, which returns at once): the floor
 *     under any design that waits in epoll_wait on a pool worker, which pays this hand-off
 *     plus the worker's own wake-up.
 */
import { Socket } from 'node:net';
import { report, step } from './_report.ts';
import { EventFd } from '../src/native/eventfd.ts';
import { watch } from '../src/native/readiness.ts';
import { socketPair } from '../src/native/unix-socket.ts';
import { createMemfd } from '../src/native/memfd.ts';
import { fdatasync } from '../src/native/file-space.ts';
import { closeFd } from '../src/native/fd.ts';

const ROUNDS = 2000;

function summarize(name: string, samples: number[]): void {
  samples.sort((a, b) => a - b);
  const at = (q: number): number => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))];
  report('readiness', `${name} median`, at(0.5), 'us', { rounds: samples.length });
  report('readiness', `${name} p99`, at(0.99), 'us', { rounds: samples.length });
}

/** Time ROUNDS wake-ups: `fire` writes, `arm(cb)` must call cb once per write it observes. */
async function measure(name: string, arm: (woken: () => void) => () => void, fire: () => void): Promise<void> {
  step(`timing wake-ups through ${name}`);
  const samples: number[] = [];
  let resolveRound!: () => void;
  let start = 0n;
  const stop = arm(() => {
    samples.push(Number(process.hrtime.bigint() - start) / 1000);
    resolveRound();
  });
  for (let i = 0; i < ROUNDS; i++) {
    const round = new Promise<void>((r) => (resolveRound = r));
    start = process.hrtime.bigint();
    fire();
    await round;
  }
  stop();
  summarize(name, samples);
}

export async function main(): Promise<void> {
  const e = EventFd.create();
  await measure(
    'uv_poll eventfd',
    (woken) => {
      const w = watch(e.fd, { readable: () => (e.take(), woken()) });
      return () => w.close();
    },
    () => e.signal(),
  );
  e.close();

  const one = new Uint8Array([1]);
  {
    const [a, b] = socketPair();
    await measure(
      'uv_poll unix socket',
      (woken) => {
        const w = watch(b.fd, { readable: () => (b.receive(), woken()) });
        return () => w.close();
      },
      () => a.send(one),
    );
    a.close();
    b.close();
  }
  {
    const [a, b] = socketPair();
    const stream = new Socket({ fd: b.fd, readable: true, writable: false });
    await measure(
      'net.Socket unix socket',
      (woken) => {
        stream.on('data', woken);
        return () => stream.off('data', woken);
      },
      () => a.send(one),
    );
    stream.destroy(); // closes b's descriptor
    a.close();
  }
  {
    const fd = createMemfd('bench', 4096);
    let settled: () => void = () => undefined;
    await measure(
      'thread-pool round trip',
      (woken) => {
        settled = woken;
        return () => undefined;
      },
      () => void fdatasync(fd).then(() => settled()),
    );
    closeFd(fd);
  }
}
