/**
 * The running GPU's control socket: a Unix socket where the host (the `paravirt gpu` command, or
 * any program) looks at the scanouts and changes the displays, one JSON object per line each way:
 *
 *   {"op":"screenshot","scanout":0}                  →  {"ok":true,"width":W,"height":H,"png":"<base64>"}
 *   {"op":"mode","scanout":0,"width":W,"height":H}   →  {"ok":true,"status":{...}}  (a display change)
 *   {"op":"status"}                                  →  {"ok":true,"status":{...}}
 *   anything refused                                 →  {"ok":false,"error":"one sentence"}
 *
 * Whoever can open the socket sees the guest's screen: its file mode is the access control
 * (created 0600).
 */
import { type LocalServer, listenLocal, parseRequest, readLines, requestLine } from '../local-socket.ts';
import type { DisplayMode, GpuDevice } from './device.ts';

export type GpuControlRequest =
  | { readonly op: 'screenshot'; readonly scanout?: number }
  | { readonly op: 'mode'; readonly scanout?: number; readonly width: number; readonly height: number; readonly enabled?: boolean }
  | { readonly op: 'status' };

export interface GpuStatus {
  /** Per scanout: the mode offered to the driver and the size of what it shows now. */
  readonly scanouts: readonly { readonly mode: Required<DisplayMode>; readonly width: number; readonly height: number }[];
  readonly cursor: { readonly scanout: number; readonly x: number; readonly y: number; readonly visible: boolean };
}

export type GpuControlReply =
  | { readonly ok: true; readonly status?: GpuStatus; readonly width?: number; readonly height?: number; readonly png?: string }
  | { readonly ok: false; readonly error: string };

/** A request line longer than this is not a control request; the connection is closed. */
const MAX_LINE = 4096;

export function gpuStatus(device: GpuDevice): GpuStatus {
  const scanouts = Array.from({ length: device.numScanouts }, (_, i) => {
    const fb = device.framebuffer(i);
    return { mode: device.mode(i), width: fb.width, height: fb.height };
  });
  const c = device.cursor;
  return { scanouts, cursor: { scanout: c.scanout, x: c.x, y: c.y, visible: c.image !== undefined } };
}

function answer(device: GpuDevice, line: string): GpuControlReply {
  const r = parseRequest(line);
  if (typeof r === 'string') return { ok: false, error: r };
  const scanout = r.scanout ?? 0;
  if (typeof scanout !== 'number' || !Number.isInteger(scanout) || scanout < 0 || scanout >= device.numScanouts) {
    return { ok: false, error: `scanout ${JSON.stringify(scanout)} does not exist (the device has ${device.numScanouts}).` };
  }
  try {
    switch (r.op) {
      case 'screenshot': {
        const fb = device.framebuffer(scanout);
        return { ok: true, width: fb.width, height: fb.height, png: fb.toPng().toString('base64') };
      }
      case 'mode':
        if (typeof r.width !== 'number' || typeof r.height !== 'number') return { ok: false, error: 'mode needs "width" and "height" in pixels.' };
        device.setMode(scanout, { width: r.width, height: r.height, enabled: r.enabled !== false });
        return { ok: true, status: gpuStatus(device) };
      case 'status':
        return { ok: true, status: gpuStatus(device) };
      default:
        return { ok: false, error: `unknown control operation ${JSON.stringify(r.op)}; use screenshot, mode or status.` };
    }
  } catch (err) {
    return { ok: false, error: `${(err as Error).message}.` };
  }
}

/** Serve `device`'s controls on a Unix socket at `path` (replacing a stale socket). */
export function listenGpuControl(device: GpuDevice, path: string): Promise<LocalServer> {
  return listenLocal(path, 'gpu control socket', (socket) =>
    readLines(
      socket,
      MAX_LINE,
      (line) => socket.write(JSON.stringify(answer(device, line)) + '\n'),
      () => socket.destroy(),
    ),
  );
}

/** Send one request to the control socket at `path` and return the reply. */
export async function gpuControlRequest(path: string, request: GpuControlRequest): Promise<GpuControlReply> {
  return JSON.parse(await requestLine(path, 'gpu control socket', JSON.stringify(request))) as GpuControlReply;
}
