/**
 * The running QXL display's control socket: a Unix socket where the host (the `paravirt qxl`
 * command, or any program) asks for the screen or the device's status, one JSON object per line
 * each way:
 *
 *   {"op":"png"}     →  {"ok":true,"width":W,"height":H,"png":"<base64>"}
 *   {"op":"status"}  →  {"ok":true,"status":{...}}
 *   {"op":"resize","width":W,"height":H}  →  {"ok":true,"status":{...}}  (the guest is told of a new monitor size)
 *   anything refused →  {"ok":false,"error":"one sentence"}
 *
 * Whoever can open the socket sees the guest's screen: its file mode is the access control
 * (created 0600).
 */
import { type LocalServer, listenLocal, parseRequest, readLines, requestLine } from '../local-socket.ts';
import type { QxlDevice, QxlStatus } from './device.ts';

export type ControlRequest = { readonly op: 'png' } | { readonly op: 'status' } | { readonly op: 'resize'; readonly width: number; readonly height: number };

export type ControlReply =
  | { readonly ok: true; readonly status?: QxlStatus; readonly width?: number; readonly height?: number; readonly png?: string }
  | { readonly ok: false; readonly error: string };

/** A request line longer than this is not a control request; the connection is closed. */
const MAX_LINE = 4096;

function answer(device: QxlDevice, line: string): ControlReply {
  const req = parseRequest(line);
  if (typeof req === 'string') return { ok: false, error: req };
  const op = req.op;
  switch (op) {
    case 'png': {
      const fb = device.framebuffer();
      if (fb === undefined) return { ok: false, error: 'the guest has not created a primary surface yet.' };
      return { ok: true, width: fb.width, height: fb.height, png: fb.toPng().toString('base64') };
    }
    case 'status':
      return { ok: true, status: device.status() };
    case 'resize': {
      const { width, height } = req;
      if (typeof width !== 'number' || typeof height !== 'number') return { ok: false, error: 'resize needs "width" and "height" in pixels.' };
      try {
        device.setMonitor(width, height);
      } catch (err) {
        return { ok: false, error: (err as Error).message };
      }
      return { ok: true, status: device.status() };
    }
    default:
      return { ok: false, error: `unknown control operation ${JSON.stringify(op)}; use png, status or resize.` };
  }
}

/** Serve `device`'s controls on a Unix socket at `path` (replacing a stale socket). */
export function listenControl(device: QxlDevice, path: string): Promise<LocalServer> {
  return listenLocal(path, 'qxl control socket', (socket) =>
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
  return JSON.parse(await requestLine(path, 'qxl control socket', JSON.stringify(request))) as ControlReply;
}
