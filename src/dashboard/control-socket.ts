/**
 * The page's live view and its hands, over one WebSocket of JSON text messages:
 *
 *   server → page   {"t":"devices","devices":[DeviceView...]}   every STATE_INTERVAL_MS
 *   page → server   {"id":N, ...request}                         a DashboardControls request
 *   server → page   {"t":"reply","id":N, ...ControlReply}
 *
 * Requests of one page are performed in order; a message that is not JSON is answered with an
 * error like any refused request. At most MAX_PENDING_REQUESTS of one page wait or run at a time:
 * one more is refused at once with an error, so a page sending faster than the devices answer
 * (a scsi attach may take a while) cannot grow the queue, and the memory it holds, without bound.
 */
import type { WebSocket } from 'ws';
import type { ControlReply } from '../devices/device-type.ts';
import type { DashboardControls } from './controls.ts';

/** How often the page gets fresh counters: often enough to watch, rarely enough to cost nothing. */
export const STATE_INTERVAL_MS = 500;

/** Requests of one page waiting or running: far more than a person clicks ahead, a few MiB of messages at most. */
export const MAX_PENDING_REQUESTS = 32;

export function serveControl(ws: WebSocket, controls: Pick<DashboardControls, 'views' | 'handle'>): void {
  const push = (): void => {
    // A page that does not keep up skips snapshots instead of queueing them.
    if (ws.readyState === ws.OPEN && ws.bufferedAmount === 0) ws.send(JSON.stringify({ t: 'devices', devices: controls.views() }));
  };
  push();
  const timer = setInterval(push, STATE_INTERVAL_MS);
  let chain = Promise.resolve();
  let pending = 0;
  ws.on('message', (data: Buffer) => {
    let request: unknown;
    try {
      request = JSON.parse(data.toString('utf8'));
    } catch {
      request = undefined;
    }
    const id = (request as { id?: unknown } | null | undefined)?.id;
    const answer = (reply: ControlReply): void => {
      if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ ...reply, t: 'reply', id: typeof id === 'number' ? id : null }));
    };
    if (request === undefined) return answer({ ok: false, error: 'a request is one JSON object.' });
    if (pending >= MAX_PENDING_REQUESTS) return answer({ ok: false, error: `${MAX_PENDING_REQUESTS} requests of this page are still waiting for their answers; send this one again once fewer are.` });
    pending++;
    chain = chain.then(async () => {
      try {
        answer(await controls.handle(request));
      } finally {
        pending--;
      }
    });
  });
  ws.on('close', () => clearInterval(timer));
}
