/**
 * The dashboard a back-end process serves over HTTP: one page (src/dashboard/public/) showing
 * the guest's console, its display, every device's counters and their controls, fed by three
 * WebSockets (`ws`): /ws/console, /ws/control and /ws/display; and /metrics, the same counters
 * for Prometheus.
 *
 * node:http rather than a framework: the routes are a fixed handful of files and one text
 * endpoint, with no parameters, bodies or sessions to parse.
 *
 * Nothing authenticates a visitor, and the page types into the guest: by default it listens on
 * the loopback interface only (docs/security.md). A browser will still let any web site it shows
 * reach a loopback port, so every request must name this server in its Host header (a site's
 * DNS name rebound to 127.0.0.1 does not) and a WebSocket must come from a page of this origin
 * (its Origin header), or it is refused.
 */
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { type AddressInfo, isIP } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Backend } from '../run/backend.ts';
import { serveConsole } from './console-socket.ts';
import { serveControl } from './control-socket.ts';
import { DashboardControls } from './controls.ts';
import { serveDisplay, findDisplay } from './display-socket.ts';
import { METRICS_CONTENT_TYPE, prometheusText } from './metrics.ts';

export interface DashboardOptions {
  readonly listen: { readonly host: string; readonly port: number };
  readonly backend: Pick<Backend, 'dir' | 'devices' | 'console' | 'setListening'>;
  readonly log: Logger;
}

export interface Dashboard {
  /** Where the page is: http://HOST:PORT/ with the port actually bound. */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * The page and its assets. Resolved against this module's folder, two levels below the package
 * root both in src/dashboard/ (run through tsx) and in dist/dashboard/ (compiled), so the page
 * is always the one in src/dashboard/public/, which the package ships.
 */
const PUBLIC = fileURLToPath(new URL('../../src/dashboard/public/', import.meta.url));
/** xterm.js, served from the installed package: the page loads nothing from elsewhere. */
const XTERM = dirname(createRequire(import.meta.url).resolve('@xterm/xterm/package.json'));

const FILES: Readonly<Record<string, { readonly path: string; readonly type: string }>> = {
  '/': { path: join(PUBLIC, 'index.html'), type: 'text/html; charset=utf-8' },
  '/app.js': { path: join(PUBLIC, 'app.js'), type: 'text/javascript; charset=utf-8' },
  '/style.css': { path: join(PUBLIC, 'style.css'), type: 'text/css; charset=utf-8' },
  '/vendor/xterm.mjs': { path: join(XTERM, 'lib', 'xterm.mjs'), type: 'text/javascript; charset=utf-8' },
  '/vendor/xterm.css': { path: join(XTERM, 'css', 'xterm.css'), type: 'text/css; charset=utf-8' },
};

/** Largest message a page may send: a key, a request, a paste into the console. */
const MAX_MESSAGE = 64 * 1024;

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '[::1]'];

/** The Host header values naming this server: its address, and on loopback the usual names for it. */
function acceptedHosts(host: string, port: number): Set<string> {
  const bracketed = host.includes(':') ? `[${host}]` : host;
  const names = new Set([bracketed]);
  if (LOOPBACK_NAMES.includes(bracketed) || bracketed.startsWith('127.')) for (const n of LOOPBACK_NAMES) names.add(n);
  return new Set([...names].map((n) => `${n}:${port}`));
}

/** Whether a listen address is reachable only from this machine. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const { backend, log } = options;
  const { host } = options.listen;
  const controls = new DashboardControls(backend);
  let hosts = new Set<string>();
  let listeningPort = 0;
  /**
   * Loopback listeners accept only their own names. One bound to a wider address accepts it
   * reached by any IP address (which it cannot list: 0.0.0.0 answers on every interface) but by
   * no DNS name, since a name is what a rebinding site controls.
   */
  const hostAllowed = (req: IncomingMessage): boolean => {
    const named = req.headers.host ?? '';
    if (isLoopback(host)) return hosts.has(named);
    if (!URL.canParse(`http://${named}`)) return false;
    const url = new URL(`http://${named}`);
    return isIP(url.hostname.replace(/^\[|\]$/g, '')) !== 0 && Number(url.port || 80) === listeningPort;
  };

  const server = createServer((req, res) => {
    void respond(req, res).catch((err: unknown) => {
      log.warn({ err, url: req.url }, 'dashboard: a request failed');
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  const respond = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (!hostAllowed(req)) return void res.writeHead(421, { 'content-type': 'text/plain' }).end('This server is not reached by that name.\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') return void res.writeHead(405, { allow: 'GET, HEAD' }).end();
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path === '/metrics') {
      const text = prometheusText(backend.devices.map((d) => ({ id: d.id, type: d.type.name, counters: d.instance.devices[0].counters.snapshot() })));
      return void res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE }).end(req.method === 'HEAD' ? undefined : text);
    }
    const file = Object.hasOwn(FILES, path) ? FILES[path] : undefined;
    if (file === undefined) return void res.writeHead(404, { 'content-type': 'text/plain' }).end('Not found.\n');
    const body = await readFile(file.path);
    // Never inside another site's frame: a framed page would take the visitor's keystrokes.
    res.writeHead(200, {
      'content-type': file.type,
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
      'x-frame-options': 'DENY',
      'content-security-policy': "frame-ancestors 'none'",
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  };

  const sockets = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE });
  const routes: Readonly<Record<string, ((ws: WebSocket) => void) | undefined>> = {
    '/ws/control': (ws) => serveControl(ws, controls),
    '/ws/console': backend.console === undefined ? undefined : (ws) => serveConsole(ws, backend.console!),
    '/ws/display': (ws) => serveDisplay(ws, () => findDisplay(backend.devices)),
  };
  server.on('upgrade', (req, socket, head) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const route = Object.hasOwn(routes, path) ? routes[path] : undefined;
    const origin = req.headers.origin;
    const sameOrigin = origin !== undefined && URL.canParse(origin) && new URL(origin).host === req.headers.host;
    if (route === undefined || !hostAllowed(req) || !sameOrigin) {
      log.warn({ path, origin, host: req.headers.host }, 'dashboard: a WebSocket was refused (unknown path, or not from this page)');
      socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n');
      return;
    }
    sockets.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', (err) => log.debug({ err, path }, 'dashboard: a WebSocket failed'));
      route(ws);
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`the dashboard cannot listen on ${host}:${options.listen.port} (${err.code ?? err.message}).`, { cause: err })));
    server.listen(options.listen.port, host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  hosts = acceptedHosts(host, port);
  listeningPort = port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}/`;
  log.info({ url }, `dashboard on ${url}`);
  return {
    url,
    close: async () => {
      for (const ws of sockets.clients) ws.terminate();
      sockets.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
