/**
 * The control WebSocket's queue of one page's requests, against controls whose answers the test
 * holds back: requests are answered in order, and one past the bound is refused at once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { MAX_PENDING_REQUESTS, serveControl } from '../../../src/dashboard/control-socket.ts';
import type { ControlReply } from '../../../src/devices/device-type.ts';

test('control socket: a page may have a bounded number of requests waiting; one more is refused at once with a sentence, the rest are answered in order', async (t) => {
  // Controls that answer only when the test lets them, like a slow SCSI attach.
  const held: { request: unknown; answer: (reply: ControlReply) => void }[] = [];
  let handed: (() => void) | undefined;
  const controls = {
    views: () => [],
    handle: (request: unknown) =>
      new Promise<ControlReply>((answer) => {
        held.push({ request, answer });
        handed?.();
      }),
  };
  const nextHeld = async (): Promise<(reply: ControlReply) => void> => {
    while (held.length === 0) await new Promise<void>((resolve) => (handed = resolve));
    return held.shift()!.answer;
  };
  const server = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await once(server, 'listening');
  t.after(() => server.close());
  server.on('connection', (ws) => serveControl(ws, controls));
  const page = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`);
  t.after(() => page.close());
  const replies: Record<string, unknown>[] = [];
  let arrived: (() => void) | undefined;
  page.on('message', (data: Buffer) => {
    const msg = JSON.parse(data.toString()) as Record<string, unknown>;
    if (msg.t !== 'reply') return;
    replies.push(msg);
    arrived?.();
  });
  const repliesReach = async (count: number): Promise<void> => {
    while (replies.length < count) await new Promise<void>((resolve) => (arrived = resolve));
  };
  await once(page, 'open');

  const sent = MAX_PENDING_REQUESTS + 3;
  for (let id = 1; id <= sent; id++) page.send(JSON.stringify({ op: 'key', id }));
  await repliesReach(3);
  assert.deepEqual(replies.map((r) => r.id), [MAX_PENDING_REQUESTS + 1, MAX_PENDING_REQUESTS + 2, MAX_PENDING_REQUESTS + 3], 'the requests past the bound are answered first');
  for (const r of replies) {
    assert.equal(r.ok, false);
    assert.match(String(r.error), new RegExp(`^${MAX_PENDING_REQUESTS} requests of this page are still waiting`));
  }
  assert.equal(held.length, 1, 'one request runs at a time');

  // The controls answer: each waiting request runs in turn and is answered in the order sent.
  while (replies.length < sent) {
    (await nextHeld())({ ok: true });
    await repliesReach(replies.length + 1);
  }
  assert.deepEqual(replies.slice(3).map((r) => [r.id, r.ok]), Array.from({ length: MAX_PENDING_REQUESTS }, (_, i) => [i + 1, true]));

  // With the queue empty again, a new request is taken.
  page.send(JSON.stringify({ op: 'key', id: 99 }));
  (await nextHeld())({ ok: true });
  await repliesReach(sent + 1);
  assert.deepEqual(replies.at(-1), { ok: true, t: 'reply', id: 99 });
});
