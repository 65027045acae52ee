/**
 * Hybrid vsock, as Firecracker and cloud-hypervisor do it: the host side of the guest's vsock
 * is Unix sockets.
 * - The guest connects to host port P: the device connects to the Unix socket `PATH_P`.
 * - A host program connects to `PATH` and writes `CONNECT P\n`; once the guest accepted on port
 *   P it reads `OK <local port>\n`, then the stream. A refused connection is closed.
 *
 * SEQPACKET connections (§5.10.6.6) keep message boundaries, so their host ends are Unix
 * SOCK_SEQPACKET sockets, one Unix message per vsock message (at most MAX_MESSAGE bytes):
 * - The guest's SEQPACKET connect to host port P connects to `PATH_P`, which must then be a
 *   SOCK_SEQPACKET listener (the same path a stream connect uses: a port is one or the other).
 * - A host program connects to the SOCK_SEQPACKET listener `PATH.seqpacket` and sends the
 *   message `CONNECT P` (a trailing newline is allowed); once the guest accepted it receives
 *   the message `OK <local port>\n`, then the connection's messages.
 */
import { type Socket, connect } from 'node:net';
import { type LocalServer, listenLocal, removeStaleSocket } from '../local-socket.ts';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { VsockDevice, VsockHost } from './device.ts';
import type { SeqpacketSocket, UnixListener } from '../../native/unix-socket.ts';
import { MAX_MESSAGE, SocketType } from './wire.ts';

/** "CONNECT 4294967295\n" is 19 bytes; a longer first line is not a request. */
const MAX_REQUEST_LINE = 32;

/** How long the SEQPACKET listener stops accepting after an accept failed. */
const ACCEPT_RETRY_MS = 100;

/** The port of a `CONNECT P` request line (without its newline), or undefined when it is not one. */
function requestedPort(line: Uint8Array): number | undefined {
  const m = /^CONNECT (\d{1,10})$/.exec(Buffer.from(line).toString('latin1').trimEnd());
  const port = m === null ? Number.NaN : Number(m[1]);
  return Number.isSafeInteger(port) && port <= 0xffff_ffff ? port : undefined;
}

/** Guest connections to port P go to the Unix socket `${path}_${P}`. */
export function unixSocketHost(path: string): VsockHost {
  return {
    async connectSeqpacket(port) {
      const [{ connectSeqpacket }, { SeqpacketStream }] = await Promise.all([import('../../native/unix-socket.ts'), import('./seqpacket-stream.ts')]);
      return new SeqpacketStream(await connectSeqpacket(`${path}_${port}`), MAX_MESSAGE);
    },
    connect: (port) =>
      new Promise<Duplex>((resolve, reject) => {
        // Half-open: the host program may finish sending and still read what the guest sends.
        const socket = connect({ path: `${path}_${port}`, allowHalfOpen: true });
        socket.once('connect', () => {
          socket.off('error', reject);
          resolve(socket);
        });
        socket.once('error', reject);
      }),
  };
}

/** Listen on `path` for host programs asking for a guest port with `CONNECT P\n`. */
export async function listenHybrid(device: VsockDevice, path: string, log: Logger): Promise<LocalServer> {
  // The request line is read as bytes: what follows it is the stream's first bytes, unchanged.
  const serve = (socket: Socket): void => {
    let line = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      line = Buffer.concat([line, chunk]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length > MAX_REQUEST_LINE) socket.destroy();
        return;
      }
      socket.off('data', onData);
      socket.pause();
      const port = requestedPort(line.subarray(0, nl));
      if (port === undefined) {
        socket.destroy();
        return;
      }
      // Bytes after the request line are the stream's first bytes.
      const rest = line.subarray(nl + 1);
      if (rest.length > 0) socket.unshift(rest);
      device.connectToGuest(port, socket, (result) => {
        if (typeof result === 'number') {
          socket.write(`OK ${result}\n`);
          return;
        }
        log.info({ port, reason: result.message }, 'vsock: the guest refused a host connection');
        socket.destroy();
      });
    };
    socket.on('data', onData);
  };
  // Host programs of any user the socket's mode lets in may connect, as to Firecracker's.
  const streams = await listenLocal(path, 'vsock socket', serve, { allowHalfOpen: true, ownerOnly: false });
  let seqpackets: LocalServer;
  try {
    seqpackets = await listenSeqpacket(device, `${path}.seqpacket`, log);
  } catch (err) {
    await streams.close();
    throw err;
  }
  return { close: async () => void (await Promise.all([streams.close(), seqpackets.close()])) };
}

/** Listen on `path` (SOCK_SEQPACKET) for host programs asking for a guest port with the message `CONNECT P`. */
async function listenSeqpacket(device: VsockDevice, path: string, log: Logger): Promise<LocalServer> {
  const [native, { watch }, { SeqpacketStream }] = await Promise.all([
    import('../../native/unix-socket.ts'),
    import('../../native/readiness.ts'),
    import('./seqpacket-stream.ts'),
  ]);
  removeStaleSocket(path, 'vsock SEQPACKET socket');
  let listener: UnixListener<SeqpacketSocket>;
  try {
    listener = native.UnixListener.listenSeqpacket(path);
  } catch (err) {
    throw new Error(`cannot listen on vsock SEQPACKET socket ${path}: ${(err as Error).message}.`, { cause: err });
  }
  const clients = new Set<Duplex>();
  const serve = (stream: Duplex): void => {
    clients.add(stream);
    stream.on('close', () => clients.delete(stream));
    stream.on('error', () => stream.destroy());
    stream.once('data', (request: Uint8Array) => {
      // The connection's messages wait until the guest accepted.
      stream.pause();
      const port = request.length <= MAX_REQUEST_LINE ? requestedPort(request) : undefined;
      if (port === undefined) {
        stream.destroy();
        return;
      }
      device.connectToGuest(
        port,
        stream,
        (result) => {
          if (typeof result === 'number') {
            stream.write({ bytes: Buffer.from(`OK ${result}\n`), eor: false });
            return;
          }
          log.info({ port, reason: result.message }, 'vsock: the guest refused a host SEQPACKET connection');
          stream.destroy();
        },
        SocketType.SEQPACKET,
      );
    });
  };
  // A failing accept (EMFILE, ENOBUFS) leaves the connection pending and the socket readable:
  // stop watching for a while rather than spin on it, as servers back off on such errors.
  let retry: NodeJS.Timeout | undefined;
  const accepting = {
    readable: () => {
      try {
        for (let s = listener.tryAccept(); s !== null; s = listener.tryAccept()) serve(new SeqpacketStream(s, MAX_MESSAGE));
      } catch (err) {
        log.warn({ path, reason: (err as Error).message, retryMs: ACCEPT_RETRY_MS }, 'vsock: accepting a SEQPACKET connection failed');
        watcher.update({});
        retry = setTimeout(() => watcher.update(accepting), ACCEPT_RETRY_MS);
        retry.unref();
      }
    },
  };
  const watcher = watch(listener.fd, accepting);
  return {
    close: async () => {
      clearTimeout(retry);
      watcher.close();
      listener.close();
      for (const c of clients) c.destroy();
    },
  };
}
