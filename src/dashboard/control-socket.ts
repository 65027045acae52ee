/**
 * The page's live view and its hands, over one WebSocket of JSON text messages:
 *
 *   server → page   {"t":"devices","devices":[DeviceView...]}   every STATE_INTERVAL_MS
 *   page → server   {"id":N, ...request}                         a DashboardControls request
 *   server → page   {"t":"reply","id":N, ...ControlReply}
 *
 * Requests of one page are performed in order; a message that is not JSON is answered with an
 * error like any refused request.
 */
import type { WebSocket } from 'ws';
import type { DashboardControls } from './controls.ts';

/** How often the page gets fresh counters: often enough to watch, rarely enough to cost nothing. */
export const STATE_INTERVAL_MS = 500;

export function serveControl(ws: WebSocket, controls: DashboardControls): void {
  const push = (): void => {
    // A page that does not keep up skips snapshots instead of queueing them.
    if (ws.readyState === ws.OPEN && ws.bufferedAmount === 0) ws.send(JSON.stringify({ t: 'devices', devices: controls.views() }));
  };
  push();
  const timer = setInterval(push, STATE_INTERVAL_MS);
  let chain = Promise.resolve();
  ws.on('message', (data: Buffer) => {
    chain = chain.then(async () => {
      let request: unknown;
      let id: unknown;
      try {
        request = JSON.parse(data.toString('utf8'));
        id = (request as { id?: unknown } | null)?.id;
      } catch {
        request = undefined;
      }
      const reply = request === undefined ? { ok: false, error: 'a request is one JSON object.' } : await controls.handle(request);
      if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ ...reply, t: 'reply', id: typeof id === 'number' ? id : null }));
    });
  });
  ws.on('close', () => clearInterval(timer));
}
