/**
 * DPDK's testpmd as a virtio peer: `net_vhost` is a vhost-user back-end (server socket),
 * `net_virtio_user` a virtio-net driver speaking vhost-user as the front-end (client). Two of them
 * make a reference packet path our own halves are compared with.
 *
 * testpmd runs interactively (-i) and is driven through its command line: every command's output
 * ends at the next prompt, so the tests wait on what testpmd says, never on the clock. Its stdout
 * is a pipe, which libc would buffer whole; stdbuf makes it unbuffered so each answer arrives
 * together with the prompt that closes it.
 *
 * Without hugepages (--no-huge) each instance takes plain memory; the forwarding lcore of each
 * instance must be a different CPU, or two busy pollers share one and the rate collapses.
 *
 * No instance keeps files: --no-shconf keeps DPDK's memory-segment tables (3 MB a process) in
 * anonymous memory instead of files under /var/run/dpdk, and --no-telemetry opens no sockets
 * there, so ending a testpmd removes one empty directory. On a machine whose /run is a disk
 * (ext4 with online discard, as in the lab VM), removing those files can wait in the kernel for
 * their writeback and a discard, on the event loop of whoever ends the peer (seen during slow
 * quits: docs/performance.md, "Why bench net overran its deadline").
 */
import { rmSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { PeerProcess, type PeerExit } from './peer-process.ts';

export type TestpmdPort =
  | {
      /** A vhost-user back-end listening on `socketPath`. */
      readonly kind: 'vhost';
      readonly socketPath: string;
      readonly queues?: number;
    }
  | {
      /** A virtio-net driver connecting to the back-end at `socketPath`. */
      readonly kind: 'virtio-user';
      readonly socketPath: string;
      readonly queues?: number;
      /** VIRTIO_F_RING_PACKED offered (packed_vq=1). */
      readonly packedVq?: boolean;
      /** VIRTIO_NET_F_MRG_RXBUF offered (mrg_rxbuf=1); DPDK offers it unless told otherwise. */
      readonly mrgRxbuf?: boolean;
      /** Ring size (queue_size=N); DPDK's default is 256. */
      readonly queueSize?: number;
    };

export type ForwardMode = 'txonly' | 'rxonly' | 'io' | 'macswap';

export interface TestpmdOptions {
  /** Names the instance in messages and its DPDK runtime directory. */
  readonly name: string;
  readonly port: TestpmdPort;
  readonly forwardMode: ForwardMode;
  /** CPU of the command-line thread (idle while waiting for input) and of the forwarding thread. */
  readonly lcores?: { readonly main: number; readonly forward: number };
  /** Frame length txonly sends (--txpkts). */
  readonly txPacketBytes?: number;
  readonly mbufs?: number;
  readonly memoryMiB?: number;
}

/** Counters of `show port stats`, for port 0. */
export interface PortStats {
  readonly rxPackets: number;
  readonly rxBytes: number;
  readonly rxMissed: number;
  readonly rxErrors: number;
  readonly txPackets: number;
  readonly txBytes: number;
  readonly txErrors: number;
}

/** What the forwarding threads counted between `start` and `stop`, all ports summed. */
export interface ForwardStats {
  readonly rxPackets: number;
  readonly rxDropped: number;
  readonly txPackets: number;
  readonly txDropped: number;
}

export interface Testpmd {
  readonly process: PeerProcess;
  /** Runs one command-line command and resolves with what it printed before the next prompt. */
  command(line: string): Promise<string>;
  /** Starts forwarding. */
  start(): Promise<void>;
  /** Stops forwarding and resolves with the forwarding counters. */
  stop(): Promise<ForwardStats>;
  /** Whether forwarding runs (start() succeeded and no stop() since): its lcore busy-polls. */
  readonly forwarding: boolean;
  portStats(): Promise<PortStats>;
  /**
   * For a vhost back-end: the virtio feature bits its driver last set (VHOST_USER_SET_FEATURES, as
   * the vhost library logs it), or undefined before any driver negotiated.
   */
  negotiatedFeatures(): bigint | undefined;
  /**
   * Quits testpmd (or, when it does not, ends it with SIGTERM, then SIGKILL) and removes its runtime
   * directory; resolves with how it ended (a signal: it did not quit). Safe to call twice.
   */
  close(): Promise<PeerExit>;
}

/** Where DPDK keeps a primary process's runtime files (root's default). */
const RUNTIME_ROOT = '/var/run/dpdk';

let instances = 0;

/** DPDK device arguments are comma-separated key=value pairs with no escaping: a value may not contain a comma. */
function devargValue(value: string, what: string): string {
  if (/[,\s]/.test(value)) throw new RangeError(`${what} ${JSON.stringify(value)} may not contain commas or spaces (DPDK device arguments)`);
  return value;
}

function positive(value: number, what: string, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) throw new RangeError(`${what} ${value} is not an integer in 1..${max}`);
  return value;
}

function vdev(port: TestpmdPort): string {
  const queues = positive(port.queues ?? 1, 'queues', 128);
  if (port.kind === 'vhost') {
    return `net_vhost0,iface=${devargValue(port.socketPath, 'socket path')},queues=${queues}`;
  }
  const args = [`net_virtio_user0`, `path=${devargValue(port.socketPath, 'socket path')}`, `queues=${queues}`];
  if (port.packedVq !== undefined) args.push(`packed_vq=${port.packedVq ? 1 : 0}`);
  if (port.mrgRxbuf !== undefined) args.push(`mrg_rxbuf=${port.mrgRxbuf ? 1 : 0}`);
  if (port.queueSize !== undefined) args.push(`queue_size=${positive(port.queueSize, 'queue size', 32768)}`);
  return args.join(',');
}

/** The "Name: number" pairs of one statistics block. */
function counters(block: string): Map<string, number> {
  const found = new Map<string, number>();
  for (const m of block.matchAll(/([A-Za-z][A-Za-z-]*):\s+(\d+)/g)) found.set(m[1], Number(m[2]));
  return found;
}

function counter(values: Map<string, number>, name: string, where: string): number {
  const value = values.get(name);
  if (value === undefined || !Number.isSafeInteger(value)) throw new Error(`testpmd's ${where} has no ${name} counter`);
  return value;
}

/** Starts testpmd and resolves at its first prompt; with `t`, it is closed when the test ends. */
export async function startTestpmd(options: TestpmdOptions, t?: TestContext): Promise<Testpmd> {
  const { main, forward } = options.lcores ?? { main: 0, forward: 1 };
  if (main === forward) throw new RangeError(`testpmd needs its main lcore (${main}) and forwarding lcore apart`);
  const prefix = `paravirt-${options.name.replace(/[^A-Za-z0-9-]/g, '-')}-${process.pid}-${++instances}`;
  const argv = [
    'stdbuf', '-o0',
    'dpdk-testpmd',
    '-l', `${Math.min(main, forward)},${Math.max(main, forward)}`,
    `--main-lcore=${main}`,
    '--no-pci',
    '--no-huge',
    '--no-shconf',
    '--no-telemetry',
    '-m', String(positive(options.memoryMiB ?? 256, 'memoryMiB', 1 << 20)),
    `--file-prefix=${prefix}`,
    '--vdev', vdev(options.port),
    '--',
    '-i',
    `--total-num-mbufs=${positive(options.mbufs ?? 16384, 'mbufs', 1 << 24)}`,
    `--forward-mode=${options.forwardMode}`,
    ...(options.txPacketBytes === undefined ? [] : [`--txpkts=${positive(options.txPacketBytes, 'txPacketBytes', 9000)}`]),
  ];
  const peer = new PeerProcess(`testpmd ${options.name}`, argv, {
    textStdout: true,
    cleanup: () => {
      rmSync(`${RUNTIME_ROOT}/${prefix}`, { recursive: true, force: true });
      // A back-end owns its listening socket; a driver's socket belongs to its back-end.
      if (options.port.kind === 'vhost') rmSync(options.port.socketPath, { force: true });
    },
  });
  const close = (): Promise<PeerExit> => peer.stop(() => peer.send('quit\n'));

  try {
    await peer.waitForOutput(/testpmd> /, 0, 'starting up to its first prompt');
  } catch (error) {
    await close();
    throw error;
  }

  // Commands run one at a time: each one's output is what lies between its echo and the next prompt.
  let queue: Promise<unknown> = Promise.resolve();
  const command = (line: string): Promise<string> => {
    if (/[\r\n]/.test(line)) return Promise.reject(new RangeError(`testpmd command ${JSON.stringify(line)} spans lines`));
    const run = async (): Promise<string> => {
      const from = peer.stdout.length;
      peer.send(`${line}\n`);
      const m = await peer.waitForOutput(/^([\s\S]*?)testpmd> /, from, `answering "${line}"`);
      return m[1];
    };
    const result = queue.then(run, run);
    queue = result.catch(() => undefined);
    return result;
  };

  let forwarding = false;
  const testpmd: Testpmd = {
    process: peer,
    command,
    async start() {
      const out = await command('start');
      if (!/packet forwarding/.test(out)) throw new Error(`testpmd ${options.name} did not start forwarding: ${out.trim()}`);
      forwarding = true;
    },
    async stop() {
      const out = await command('stop');
      forwarding = false;
      const block = /Accumulated forward statistics for all ports\+*\n([\s\S]*?)\+{10,}/.exec(out);
      if (!block) throw new Error(`testpmd ${options.name} printed no forward statistics on stop: ${out.trim()}`);
      const c = counters(block[1]);
      const where = 'forward statistics';
      return {
        rxPackets: counter(c, 'RX-packets', where),
        rxDropped: counter(c, 'RX-dropped', where),
        txPackets: counter(c, 'TX-packets', where),
        txDropped: counter(c, 'TX-dropped', where),
      };
    },
    async portStats() {
      const out = await command('show port stats 0');
      const block = /NIC statistics for port 0 +#+\n([\s\S]*?)#{10,}/.exec(out);
      if (!block) throw new Error(`testpmd ${options.name} printed no port statistics: ${out.trim()}`);
      const c = counters(block[1]);
      const where = 'port statistics';
      return {
        rxPackets: counter(c, 'RX-packets', where),
        rxBytes: counter(c, 'RX-bytes', where),
        rxMissed: counter(c, 'RX-missed', where),
        rxErrors: counter(c, 'RX-errors', where),
        txPackets: counter(c, 'TX-packets', where),
        txBytes: counter(c, 'TX-bytes', where),
        txErrors: counter(c, 'TX-errors', where),
      };
    },
    get forwarding() {
      return forwarding;
    },
    negotiatedFeatures() {
      const logged = [...peer.output.matchAll(/negotiated Virtio features: (0x[0-9a-fA-F]+)/g)];
      return logged.length === 0 ? undefined : BigInt(logged[logged.length - 1][1]);
    },
    close,
  };
  t?.after(close);
  return testpmd;
}
