/**
 * Hybrid vsock, as Firecracker and cloud-hypervisor do it: the host side of the guest's vsock
 * is Unix sockets.
 * - The guest connects to host port P: the device connects to the Unix socket `PATH_P`.
 * - A host program connects to `PATH` and writes `CONNECT P\n`; once the guest accepted on port
 *   P it reads `OK <local port>\n`, then the stream. A refused connection is closed.
 */
import { type Socket, connect } from 'node:net';
import { type LocalServer, listenLocal } from '../local-socket.ts';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { VsockDevice, VsockHost } from './device.ts';

/** "CONNECT 4294967295\n" is 19 bytes; a longer first line is not a request. */
const MAX_REQUEST_LINE = 32;

/** Guest connections to port P go to the Unix socket `${path}_${P}`. */
export function unixSocketHost(path: string): VsockHost {
  return {
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
export function listenHybrid(device: VsockDevice, path: string, log: Logger): Promise<LocalServer> {
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
      const m = /^CONNECT (\d{1,10})$/.exec(line.subarray(0, nl).toString('latin1').trimEnd());
      const port = m === null ? Number.NaN : Number(m[1]);
      if (!Number.isSafeInteger(port) || port > 0xffff_ffff) {
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
  return listenLocal(path, 'vsock socket', serve, { allowHalfOpen: true, ownerOnly: false });
}
