/**
 * A Unix socket a device's host side listens on: the control sockets of the running back-end
 * (balloon target, input typing), console ports and vsock's hybrid side. One place for what
 * each needs:
 *
 * - a stale socket left by an earlier run is replaced, but never another kind of file (a typo
 *   in a path must not delete someone's data);
 * - a control socket is the owner's alone (mode 0600): whoever connects controls the device
 *   (a console port too: whoever connects types into the guest);
 * - close() ends every connection, stops listening and removes the socket file;
 * - a failure to listen is one sentence naming the path.
 *
 * Line-based protocols read their requests with `readLines`.
 */
import { chmodSync, lstatSync, rmSync } from 'node:fs';
import { type Socket, connect, createServer } from 'node:net';

export interface LocalServer {
  close(): Promise<void>;
}

/**
 * Remove a socket left at `path` by an earlier run, so a new listener can bind it; any other
 * kind of file there is an error naming `what` and the path.
 */
export function removeStaleSocket(path: string, what: string): void {
  let existing: ReturnType<typeof lstatSync> | undefined;
  try {
    existing = lstatSync(path);
  } catch {
    existing = undefined;
  }
  if (existing !== undefined && !existing.isSocket()) throw new Error(`${what} ${path} exists and is not a socket.`);
  if (existing !== undefined) rmSync(path);
}

/** Listen on `path` (`what` names it in errors: "balloon control socket"); `serve` takes each connection. */
export async function listenLocal(
  path: string,
  what: string,
  serve: (socket: Socket) => void,
  options: { readonly allowHalfOpen?: boolean; readonly ownerOnly?: boolean } = {},
): Promise<LocalServer> {
  removeStaleSocket(path, what);
  const clients = new Set<Socket>();
  const server = createServer({ allowHalfOpen: options.allowHalfOpen === true }, (socket) => {
    clients.add(socket);
    socket.on('close', () => clients.delete(socket));
    socket.on('error', () => socket.destroy());
    serve(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`cannot listen on ${what} ${path}: ${err.message}.`)));
    server.listen(path, resolve);
  });
  if (options.ownerOnly !== false) chmodSync(path, 0o600);
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of clients) c.destroy();
        server.close(() => resolve());
        rmSync(path, { force: true });
      }),
  };
}

/**
 * A control request line as its fields, or the one sentence to answer when it is not one JSON
 * object; each device's control then reads `op` and its own fields.
 */
export function parseRequest(line: string): Record<string, unknown> | string {
  let req: unknown;
  try {
    req = JSON.parse(line);
  } catch {
    return 'a control request is one JSON object per line.';
  }
  if (typeof req !== 'object' || req === null || Array.isArray(req)) return 'a control request is a JSON object with an "op".';
  return req as Record<string, unknown>;
}

/**
 * Call `onLine` for each newline-terminated line `socket` sends (UTF-8, without the newline);
 * a line longer than `maxLine` calls `onTooLong` instead and reads no more.
 */
export function readLines(socket: Socket, maxLine: number, onLine: (line: string) => void, onTooLong: () => void): void {
  let pending = '';
  socket.setEncoding('utf8');
  const onData = (chunk: string): void => {
    pending += chunk;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      onLine(line);
    }
    if (pending.length > maxLine) {
      socket.off('data', onData);
      onTooLong();
    }
  };
  socket.on('data', onData);
}

/** A line request whose answer did not come in time. */
export class RequestTimeout extends Error {
  constructor(what: string, path: string, ms: number) {
    super(`the ${what} ${path} did not answer within ${ms} ms.`);
    this.name = 'RequestTimeout';
  }
}

/**
 * The client side of a line protocol: send `line` to the socket at `path` (`what` names it in
 * errors) and resolve with the first line of the answer, without its newline; with `timeoutMs`,
 * give up with a RequestTimeout when none came by then.
 */
export async function requestLine(path: string, what: string, line: string, timeoutMs?: number): Promise<string> {
  const socket = connect(path);
  if (timeoutMs !== undefined) socket.setTimeout(timeoutMs, () => socket.destroy(new RequestTimeout(what, path, timeoutMs)));
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (err) => reject(new Error(`cannot reach the ${what} ${path}: ${err.message}.`)));
    });
    socket.setEncoding('utf8');
    socket.write(line + '\n');
    let text = '';
    // A timeout destroys the socket with its RequestTimeout, which this loop throws.
    for await (const chunk of socket) {
      text += chunk as string;
      const nl = text.indexOf('\n');
      if (nl >= 0) return text.slice(0, nl);
    }
    throw new Error(`the ${what} ${path} closed without answering.`);
  } finally {
    socket.destroy();
  }
}
