/**
 * The running balloon's control socket: a Unix socket where the host (the `paravirt balloon`
 * command, or any program) sets the target and reads statistics, one JSON object per line each
 * way:
 *
 *   {"op":"set","bytes":268435456}  →  {"ok":true,"status":{...}}
 *   {"op":"status"}                 →  {"ok":true,"status":{...}}
 *   {"op":"stats"}                  →  {"ok":true,"stats":{...}|null}
 *   {"op":"wait"}                   →  {"ok":true,"status":{...}} once actual equals the target
 *   anything refused                →  {"ok":false,"error":"one sentence"}
 *
 * Requests on one connection are answered in order; a client that stops waiting closes it.
 *
 * Whoever can open the socket controls how much memory the guest keeps: its file mode is the
 * access control (created 0600).
 */
import type { Socket } from 'node:net';
import { type LocalServer, listenLocal, parseRequest, readLines, requestLine } from '../local-socket.ts';
import type { BalloonDevice, BalloonStats, BalloonStatus } from './device.ts';

export type ControlRequest =
  | { readonly op: 'set'; readonly bytes: number }
  | { readonly op: 'status' }
  | { readonly op: 'stats' }
  | { readonly op: 'wait' };

export type ControlReply =
  | { readonly ok: true; readonly status?: BalloonStatus; readonly stats?: BalloonStats | null }
  | { readonly ok: false; readonly error: string };

/** A request line longer than this is not a control request; the connection is closed. */
const MAX_LINE = 4096;

/** The status once the driver's actual equals the target, or never if `socket` closes first. */
function settled(device: BalloonDevice, socket: Socket): Promise<ControlReply> {
  return new Promise((resolve) => {
    const check = (): void => {
      const status = device.status();
      if (status.actualBytes !== status.targetBytes) return;
      stop();
      resolve({ ok: true, status });
    };
    const stop = (): void => {
      device.off('actual', check);
      device.off('target', check);
      socket.off('close', stop);
    };
    device.on('actual', check);
    device.on('target', check);
    socket.on('close', stop);
    check();
  });
}

function answer(device: BalloonDevice, line: string, socket: Socket): ControlReply | Promise<ControlReply> {
  const req = parseRequest(line);
  if (typeof req === 'string') return { ok: false, error: req };
  const op = req.op;
  switch (op) {
    case 'set': {
      const bytes = req.bytes;
      if (typeof bytes !== 'number') return { ok: false, error: 'set needs "bytes", the balloon size in bytes.' };
      try {
        device.setTarget(bytes);
      } catch (err) {
        return { ok: false, error: (err as Error).message };
      }
      return { ok: true, status: device.status() };
    }
    case 'status':
      return { ok: true, status: device.status() };
    case 'stats':
      return { ok: true, stats: device.stats ?? null };
    case 'wait':
      return settled(device, socket);
    default:
      return { ok: false, error: `unknown control operation ${JSON.stringify(op)}; use set, status, stats or wait.` };
  }
}

/** Serve `device`'s controls on a Unix socket at `path` (replacing a stale socket). */
export function listenControl(device: BalloonDevice, path: string): Promise<LocalServer> {
  return listenLocal(path, 'balloon control socket', (socket) => {
    // A wait holds its answer: later requests are answered after it, in order.
    let answered: Promise<void> = Promise.resolve();
    readLines(
      socket,
      MAX_LINE,
      (line) => {
        answered = answered
          .then(() => answer(device, line, socket))
          .then((reply) => {
            if (!socket.destroyed) socket.write(JSON.stringify(reply) + '\n');
          });
      },
      () => socket.destroy(),
    );
  });
}

/** No reply came within the time the caller gave (a wait for a guest that does not follow). */
/**
 * Send one request to the control socket at `path` and return the reply; with `timeoutMs`,
 * give up (RequestTimeout) when none came by then.
 */
export async function controlRequest(path: string, request: ControlRequest, timeoutMs?: number): Promise<ControlReply> {
  return JSON.parse(await requestLine(path, 'balloon control socket', JSON.stringify(request), timeoutMs)) as ControlReply;
}

const UNITS: Readonly<Record<string, number>> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** "256M", "1G", "4096" (bytes) as a number of bytes; anything else is an Error of one sentence. */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  const bytes = m === null ? Number.NaN : Number(m[1]) * UNITS[m[2].toUpperCase()];
  if (!Number.isSafeInteger(bytes)) throw new Error(`balloon size "${text}" is not a non-negative size such as 256M, 1G or 4096.`);
  return bytes;
}
