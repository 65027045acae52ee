/**
 * The dashboard against a back-end serving a console, a balloon, a keyboard, a tablet and a net
 * device, with paravirt's own drivers over the mmio loopback playing the guest: the page's
 * files, /metrics, the console both ways, controls reaching the drivers, and the refusals that
 * keep other web sites out.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { WebSocket } from 'ws';
import { BalloonDriver } from '../../../src/devices/balloon/driver.ts';
import { ConsoleDriver } from '../../../src/devices/console/driver.ts';
import { InputDriver } from '../../../src/devices/input/driver.ts';
import { KEY_CODES } from '../../../src/devices/input/keys.ts';
import { EvType } from '../../../src/devices/input/wire.ts';
import { deviceType } from '../../../src/devices/registry.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { Backend } from '../../../src/run/backend.ts';
import { startDashboard } from '../../../src/dashboard/server.ts';

const log = pino({ level: 'silent' });

async function setUp(t: import('node:test').TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'dashboard-'));
  const type = (name: string) => deviceType(name)!;
  const backend = await Backend.start(
    {
      socketDir: dir,
      console: 'console0',
      devices: [
        { id: 'console0', type: type('console'), values: {} },
        { id: 'balloon0', type: type('balloon'), values: {} },
        { id: 'keyboard0', type: type('input'), values: { kind: 'keyboard' } },
        { id: 'tablet0', type: type('input'), values: { kind: 'tablet' } },
        { id: 'net0', type: type('net'), values: {} },
      ],
    },
    log,
  );
  const dashboard = await startDashboard({ listen: { host: '127.0.0.1', port: 0 }, backend, log });
  t.after(async () => {
    await dashboard.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const device = (id: string) => backend.device(id)!.instance.devices[0];
  return { backend, dashboard, device, origin: dashboard.url.replace(/\/$/, '') };
}

/**
 * A WebSocket to `path` of the dashboard, opened as the dashboard's own page would; `onMessage`
 * listens from the start (the server may speak before 'open' is seen).
 */
async function socket(origin: string, path: string, onMessage: (data: Buffer) => void): Promise<WebSocket> {
  const ws = new WebSocket(`${origin.replace('http', 'ws')}${path}`, { origin });
  ws.on('message', onMessage);
  await once(ws, 'open');
  return ws;
}

/** A control client: requests answered in order. */
async function controlClient(origin: string) {
  let id = 0;
  let taken = 0;
  const replies = new Map<number, (reply: Record<string, unknown>) => void>();
  const views: Record<string, unknown>[][] = [];
  const ws = await socket(origin, '/ws/control', (data: Buffer) => {
    const msg = JSON.parse(data.toString()) as Record<string, unknown>;
    if (msg.t === 'devices') views.push(msg.devices as Record<string, unknown>[]);
    else replies.get(msg.id as number)?.(msg);
  });
  return {
    ws,
    views,
    request(body: Record<string, unknown>): Promise<Record<string, unknown>> {
      const n = ++id;
      ws.send(JSON.stringify({ ...body, id: n }));
      return new Promise((resolve) => replies.set(n, resolve));
    },
    /** The first view not taken yet. */
    async nextView(): Promise<Record<string, unknown>[]> {
      while (views.length === taken) await once(ws, 'message');
      return views[taken++];
    },
  };
}

test('dashboard: the page, xterm.js and /metrics are served; other names and methods are refused', async (t) => {
  const { dashboard, origin } = await setUp(t);
  assert.match(dashboard.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
  const page = await fetch(dashboard.url);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<script type="module" src="\/app\.js">/);
  for (const path of ['/app.js', '/style.css', '/vendor/xterm.mjs', '/vendor/xterm.css']) assert.equal((await fetch(origin + path)).status, 200, path);
  assert.equal((await fetch(`${origin}/../package.json`)).status, 404);
  assert.equal((await fetch(`${origin}/`, { method: 'POST' })).status, 405);

  const metrics = await fetch(`${origin}/metrics`);
  assert.equal(metrics.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  const text = await metrics.text();
  assert.match(text, /^# TYPE paravirt_queue_requests_total counter$/m);
  assert.match(text, /^paravirt_queue_requests_total\{device="balloon0",type="balloon",queue="0"\} 0$/m);
  assert.match(text, /^paravirt_input_dropped_no_driver\{device="keyboard0"\} 0$/m);
  assert.match(text, /^# TYPE paravirt_queue_in_flight gauge$/m);
  assert.match(text, /^paravirt_queue_size\{device="balloon0",type="balloon",queue="2"\} 0$/m, 'no driver: the queue does not run');

  // A DNS name rebound to 127.0.0.1 reaches the port but names another host.
  const { request } = await import('node:http');
  const status = await new Promise<number | undefined>((resolve, reject) => {
    const req = request(`${origin}/metrics`, { headers: { host: 'attacker.example:80' } }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(status, 421);
});

test('dashboard: on a wider address it is reached by IP address, never by a DNS name; no site may frame it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dashboard-wide-'));
  const backend = await Backend.start({ socketDir: dir, devices: [{ id: 'rng0', type: deviceType('rng')!, values: {} }] }, log);
  const dashboard = await startDashboard({ listen: { host: '0.0.0.0', port: 0 }, backend, log });
  t.after(async () => {
    await dashboard.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const port = new URL(dashboard.url).port;
  const { request } = await import('node:http');
  const get = (host: string): Promise<{ status?: number; frame?: string | string[] }> =>
    new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/', headers: { host } }, (res) => {
        res.resume();
        resolve({ status: res.statusCode, frame: res.headers['x-frame-options'] });
      });
      req.on('error', reject);
      req.end();
    });
  assert.deepEqual(await get(`127.0.0.1:${port}`), { status: 200, frame: 'DENY' });
  assert.equal((await get(`attacker.example:${port}`)).status, 421, 'a rebound DNS name');
  assert.equal((await get('127.0.0.1:1')).status, 421, 'another port');
});

test('dashboard: a WebSocket must come from the dashboard page itself', async (t) => {
  const { origin } = await setUp(t);
  for (const from of [undefined, 'http://attacker.example']) {
    const ws = new WebSocket(`${origin.replace('http', 'ws')}/ws/control`, from === undefined ? {} : { origin: from });
    const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number }];
    assert.equal(res.statusCode, 403, `origin ${from}`);
  }
  const unknown = new WebSocket(`${origin.replace('http', 'ws')}/ws/elsewhere`, { origin });
  const [, res] = (await once(unknown, 'unexpected-response')) as [unknown, { statusCode: number }];
  assert.equal(res.statusCode, 403);
});

test('dashboard: the console carries the guest output to the page, with what came before, and the page keys to the guest', { timeout: 20_000 }, async (t) => {
  const { device, origin } = await setUp(t);
  const driver = await ConsoleDriver.open(createLoopback(device('console0'), { memoryBytes: 4 << 20 }).transport);
  t.after(() => driver.close());
  const port = await driver.consolePort();
  await port.open();
  await port.hostReady();
  await driver.transmit(port.id, Buffer.from('login: '));

  let shown = '';
  const ws = await socket(origin, '/ws/console', (data: Buffer) => (shown += data.toString()));
  while (!shown.includes('login: ')) await once(ws, 'message');

  const typed = once(port, 'data');
  ws.send('root\r');
  assert.equal(String((await typed)[0]), 'root\r');
  await driver.transmit(port.id, Buffer.from('# '));
  while (!shown.endsWith('# ')) await once(ws, 'message');
  assert.equal(shown, 'login: # ');
  ws.close();
});

test('dashboard: controls set the balloon, type on the keyboard, point the tablet and take the link down; bad requests get one sentence', async (t) => {
  const { backend, device, origin } = await setUp(t);
  const control = await controlClient(origin);
  t.after(() => control.ws.close());

  const first = await control.nextView();
  assert.deepEqual(first.map((v) => v.id), ['console0', 'balloon0', 'keyboard0', 'tablet0', 'net0']);
  const keyboardView = first.find((v) => v.id === 'keyboard0')!;
  assert.deepEqual(keyboardView.state, { kind: 'keyboard' });

  // Before a guest driver runs, the device refuses and says why.
  assert.match(String((await control.request({ op: 'balloon', device: 'balloon0', bytes: 1 << 20 })).error), /before a guest driver/);
  assert.match(String((await control.request({ op: 'key', code: 'KeyA', down: true })).error), /dropped/);

  // With statistics: the driver posts a buffer the device holds until it wants them (§5.5.6.3).
  const balloon = await BalloonDriver.open(createLoopback(device('balloon0'), { memoryBytes: 32 << 20 }).transport, { stats: () => [] });
  t.after(() => balloon.close());
  const reply = await control.request({ op: 'balloon', device: 'balloon0', bytes: 8 << 20 });
  assert.equal(reply.ok, true);
  await balloon.settled();
  assert.equal(balloon.size, 2048, 'the guest driver inflated to the target');
  let balloonView: Record<string, unknown> | undefined;
  while ((balloonView?.state as { actualBytes?: number } | undefined)?.actualBytes !== 8 << 20) balloonView = (await control.nextView()).find((v) => v.id === 'balloon0');
  const counters = balloonView!.counters as { queues: { requests: number }[]; fill: { inFlight: number; size: number }[] };
  assert.ok(counters.queues[0].requests > 0, 'the inflate queue counted its requests');
  assert.equal(counters.fill[2].inFlight, 1, "the statsq holds the driver's statistics buffer (§5.5.6.3)");
  assert.ok(counters.fill[2].size > 0);

  const keyboard = await InputDriver.open(createLoopback(device('keyboard0'), { memoryBytes: 4 << 20 }).transport);
  const tablet = await InputDriver.open(createLoopback(device('tablet0'), { memoryBytes: 4 << 20 }).transport);
  t.after(async () => {
    await keyboard.close();
    await tablet.close();
  });
  assert.deepEqual(await control.request({ op: 'key', code: 'KeyQ', down: true }), { ok: true, t: 'reply', id: 4 });
  const [key] = (await once(keyboard.events, 'data')) as [{ type: number; code: number; value: number }];
  assert.deepEqual(key, { type: EvType.KEY, code: KEY_CODES.q, value: 1 });
  assert.equal((await control.request({ op: 'pointer', x: 0.5, y: 1 })).ok, true);
  const [x] = (await once(tablet.events, 'data')) as [{ value: number }];
  assert.equal(x.value, 16384);

  // The link goes down with the socket (QEMU's virtio-net follows the socket), and comes back up.
  const netSocket = backend.device('net0')!.socketPath;
  assert.equal(existsSync(netSocket), true);
  assert.equal((await control.request({ op: 'link', device: 'net0', up: false })).ok, true);
  assert.equal(existsSync(netSocket), false, 'nobody is served on the socket while the link is down');
  while (((await control.nextView()).find((v) => v.id === 'net0')!.state as { link: boolean }).link !== false);
  assert.equal((await control.request({ op: 'link', device: 'net0', up: true })).ok, true);
  assert.equal(existsSync(netSocket), true);

  for (const [bad, error] of [
    [{ op: 'explode' }, /"op" must be/],
    [{ op: 'balloon', device: 'net0', bytes: 0 }, /net0 is not a balloon/],
    [{ op: 'balloon', device: 'nothing', bytes: 0 }, /no device "nothing"/],
    [{ op: 'balloon', device: 'balloon0', bytes: -1 }, /not a non-negative number of bytes/],
    [{ op: 'key', code: 'Fn', down: true }, /"Fn" has no evdev code/],
    [{ op: 'pointer', x: 2, y: 0 }, /"x" must be a number from 0 to 1/],
    [{ op: 'move', dx: 1, dy: 1 }, /no mouse device/],
    [{ op: 'lun', device: 'balloon0', request: { op: 'list' } }, /balloon0 has no LUNs/],
  ] as const) {
    const r = await control.request(bad);
    assert.equal(r.ok, false, JSON.stringify(bad));
    assert.match(String(r.error), error);
  }
  const refused = new Promise<Record<string, unknown>>((resolve) =>
    control.ws.on('message', (data: Buffer) => {
      const msg = JSON.parse(data.toString()) as Record<string, unknown>;
      if (msg.t === 'reply' && msg.id === null) resolve(msg);
    }),
  );
  control.ws.send('not json');
  assert.deepEqual(await refused, { ok: false, error: 'a request is one JSON object.', t: 'reply', id: null });
});

test('dashboard: SCSI LUNs are listed, attached and detached through the controller\'s own control requests', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dashboard-scsi-'));
  const [a, b] = [join(dir, 'a.img'), join(dir, 'b.img')];
  writeFileSync(a, new Uint8Array(1 << 20));
  writeFileSync(b, new Uint8Array(2 << 20));
  const backend = await Backend.start({ socketDir: dir, devices: [{ id: 'scsi0', type: deviceType('scsi')!, values: { lun: [{ path: a, readOnly: false }] } }] }, log);
  const dashboard = await startDashboard({ listen: { host: '127.0.0.1', port: 0 }, backend, log });
  const control = await controlClient(dashboard.url.replace(/\/$/, ''));
  t.after(async () => {
    control.ws.close();
    await dashboard.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const lun = (request: Record<string, unknown>) => control.request({ op: 'lun', device: 'scsi0', request });
  assert.equal((await lun({ op: 'attach', lun: `${b},ro`, target: 0, number: 4 })).ok, true);
  const listed = await lun({ op: 'list' });
  assert.deepEqual(
    (listed.luns as { number: number; sectors: number; readOnly: boolean }[]).map(({ number, sectors, readOnly }) => ({ number, sectors, readOnly })),
    [{ number: 0, sectors: 2048, readOnly: false }, { number: 4, sectors: 4096, readOnly: true }],
  );
  assert.equal((await lun({ op: 'detach', target: 0, number: 4 })).ok, true);
  // Only images in the VM directory: not a host file, not a link there to one.
  assert.match(String((await lun({ op: 'attach', lun: '/etc/hostname,ro', target: 0, number: 5 })).error), /only images in the VM directory/);
  symlinkSync('/etc/hostname', join(dir, 'link.img'));
  assert.match(String((await lun({ op: 'attach', lun: join(dir, 'link.img'), target: 0, number: 5 })).error), /only images in the VM directory/);
  assert.match(String((await lun({ op: 'detach', target: 0, number: 4 })).error), /no SCSI LUN 0:4/);
  assert.match(String((await control.request({ op: 'lun', device: 'scsi0', request: 'list' })).error), /"request" must be/);
});
