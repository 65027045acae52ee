/**
 * The running balloon's control socket: a Unix socket where the host (the `paravirt balloon`
 * command, or any program) sets the target and reads statistics, one JSON object per line each
 * way:
 *
 *   {"op":"set","bytes":268435456}  →  {"ok":true,"status":{...}}
 *   {"op":"status"}                 →  {"ok":true,"status":{...}}
 *   {"op":"stats"}                  →  {"ok":true,"stats":{...}|null}
 *   anything refused                →  {"ok":false,"error":"one sentence"}
 *
 * Whoever can open the socket controls how much memory the guest keeps: its file mode is the
 * access control (created 0600).
 */
import { connect } from 'node:net';
import { type LocalServer, listenLocal, readLines } from '../local-socket.ts';
import type { BalloonDevice, BalloonStats, BalloonStatus } from './device.ts';

export type ControlRequest = { readonly op: 'set'; readonly bytes: number } | { readonly op: 'status' } | { readonly op: 'stats' };

export type ControlReply =
  | { readonly ok: true; readonly status?: BalloonStatus; readonly stats?: BalloonStats | null }
  | { readonly ok: false; readonly error: string };

/** A request line longer than this is not a control request; the connection is closed. */
const MAX_LINE = 4096;

function answer(device: BalloonDevice, line: string): ControlReply {
  let req: unknown;
  try {
    req = JSON.parse(line);
  } catch {
    return { ok: false, error: 'a control request is one JSON object per line.' };
  }
  const op = typeof req === 'object' && req !== null && 'op' in req ? req.op : undefined;
  switch (op) {
    case 'set': {
      const bytes = (req as { bytes?: unknown }).bytes;
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
    default:
      return { ok: false, error: `unknown control operation ${JSON.stringify(op)}; use set, status or stats.` };
  }
}

/** Serve `device`'s controls on a Unix socket at `path` (replacing a stale socket). */
export function listenControl(device: BalloonDevice, path: string): Promise<LocalServer> {
  return listenLocal(path, 'balloon control socket', (socket) =>
    readLines(
      socket,
      MAX_LINE,
      (line) => socket.write(JSON.stringify(answer(device, line)) + '\n'),
      () => socket.destroy(),
    ),
  );
}

/** Send one request to the control socket at `path` and return the reply. */
export async function controlRequest(path: string, request: ControlRequest): Promise<ControlReply> {
  const socket = connect(path);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (err) => reject(new Error(`cannot reach the balloon control socket ${path}: ${err.message}`)));
    });
    socket.setEncoding('utf8');
    socket.write(JSON.stringify(request) + '\n');
    let text = '';
    for await (const chunk of socket) {
      text += chunk as string;
      const nl = text.indexOf('\n');
      if (nl >= 0) return JSON.parse(text.slice(0, nl)) as ControlReply;
    }
    throw new Error(`the balloon control socket ${path} closed without answering`);
  } finally {
    socket.destroy();
  }
}

const UNITS: Readonly<Record<string, number>> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** "256M", "1G", "4096" (bytes) as a number of bytes; anything else is an Error of one sentence. */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  const bytes = m === null ? Number.NaN : Number(m[1]) * UNITS[m[2].toUpperCase()];
  if (!Number.isSafeInteger(bytes)) throw new Error(`balloon size "${text}" is not a non-negative size such as 256M, 1G or 4096.`);
  return bytes;
}
