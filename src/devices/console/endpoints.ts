/**
 * Host ends of console ports, as `paravirt serve console` names them:
 *
 * - `unix:PATH`: a listening Unix socket taking one client at a time, as QEMU's
 *   `-chardev socket,server=on`; a second client is closed at once while the first is connected.
 *   The guest sees the client come and go (PORT_OPEN); without a client, guest output is discarded.
 * - `file:PATH`: guest output appended to a file (a log); no input; always connected.
 * - `stdio`: the back-end's own standard input and output (which also carry its log lines: use
 *   `--log-level silent`); a terminal is put in raw mode and its size is the console's.
 *
 * - `pty`: a new pseudo-terminal in raw mode, its path logged (`screen /dev/pts/N`); always
 *   connected (the back-end keeps its terminal side open, as a terminal program may come and go),
 *   so guest output waits in the terminal's queue until a program reads it.
 * - a `link` given by a program embedding the device (never parsed from a command line): the
 *   host client it names is attached for the device's lifetime, as `paravirt run` shares the
 *   console between the terminal and other viewers.
 */
import { openSync, createWriteStream, closeSync } from 'node:fs';
import type { Logger } from 'pino';
import { OptionError } from '../host-options.ts';
import { listenLocal } from '../local-socket.ts';
import type { ConsolePort, HostLink } from './port.ts';

export type EndpointSpec =
  | { readonly kind: 'unix'; readonly path: string }
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'stdio' }
  | { readonly kind: 'pty' }
  | { readonly kind: 'link'; readonly link: HostLink };

/** A named port's host end: `--port NAME=ENDPOINT`. */
export interface NamedEndpoint {
  readonly name: string;
  readonly endpoint: EndpointSpec;
}

export function isEndpointSpec(v: unknown): v is EndpointSpec {
  return typeof v === 'object' && v !== null && 'kind' in v;
}

export function isNamedEndpoint(v: unknown): v is NamedEndpoint {
  return typeof v === 'object' && v !== null && 'name' in v && 'endpoint' in v;
}

/** `unix:PATH`, `file:PATH` or `stdio`; `allowed` lists the kinds the option takes. */
export function parseEndpoint(option: string, text: string, allowed: readonly EndpointSpec['kind'][]): EndpointSpec {
  const kinds = allowed.map((k) => (k === 'stdio' || k === 'pty' ? k : `${k}:PATH`)).join(', ');
  const bad = (): OptionError => new OptionError(`${option} must be one of ${kinds}, not "${text}".`);
  let spec: EndpointSpec;
  if (text === 'stdio' || text === 'pty') spec = { kind: text };
  else {
    const m = /^(unix|file):(.+)$/.exec(text);
    if (m === null) throw bad();
    spec = { kind: m[1] as 'unix' | 'file', path: m[2] };
  }
  if (!allowed.includes(spec.kind)) throw bad();
  return spec;
}

export function parseNamedEndpoint(text: string): NamedEndpoint {
  const eq = text.indexOf('=');
  const name = eq < 0 ? '' : text.slice(0, eq);
  if (name === '' || Buffer.byteLength(name) > 255 || name.includes('\0')) {
    throw new OptionError(`--port must be NAME=ENDPOINT with a name of 1 to 255 bytes, not "${text}".`);
  }
  return { name, endpoint: parseEndpoint(`--port ${name}`, text.slice(eq + 1), ['unix', 'pty', 'file']) };
}

/** Connect `port` to its host end; resolves with how to close that end. */
export async function openEndpoint(spec: EndpointSpec, port: ConsolePort, log: Logger): Promise<() => Promise<void>> {
  switch (spec.kind) {
    case 'stdio': {
      // A terminal passes every key to the guest, as QEMU's `-chardev stdio,signal=off`: stop the back-end with SIGTERM.
      const raw = process.stdin.isTTY;
      if (raw) process.stdin.setRawMode(true);
      port.attach({ input: process.stdin, output: process.stdout });
      return async () => {
        port.detach();
        if (raw) process.stdin.setRawMode(false);
      };
    }
    case 'file': {
      let fd: number;
      try {
        fd = openSync(spec.path, 'a');
      } catch (err) {
        throw new Error(`port ${port.name ?? port.id}: cannot open ${spec.path} for appending (${(err as NodeJS.ErrnoException).code ?? String(err)}).`, { cause: err });
      }
      const output = createWriteStream('', { fd, autoClose: false });
      output.on('error', (err) => log.error({ err }, `port ${port.name ?? port.id}: writing ${spec.path} failed`));
      port.attach({ output });
      return async () => {
        port.detach();
        await new Promise<void>((resolve) => output.end(resolve));
        closeSync(fd);
      };
    }
    case 'unix':
      return listen(spec.path, port, log);
    case 'link':
      port.attach(spec.link);
      return async () => port.detach();
    case 'pty': {
      const { PtyStream } = await import('./pty-stream.ts');
      const pty = new PtyStream();
      log.info({ port: port.name ?? port.id, pty: pty.path }, `port ${port.name ?? port.id} is on ${pty.path}`);
      port.attach({ input: pty, output: pty });
      return async () => {
        port.detach();
        pty.destroy();
      };
    }
  }
}

/** A listening socket taking one client at a time, as a QEMU socket chardev does. */
async function listen(path: string, port: ConsolePort, log: Logger): Promise<() => Promise<void>> {
  const server = await listenLocal(path, `port ${port.name ?? port.id} socket`, (socket) => {
    if (port.hostConnected) {
      log.warn({ path }, `port ${port.name ?? port.id}: a second client was refused`);
      socket.destroy();
      return;
    }
    socket.on('close', () => port.detach());
    port.attach({ input: socket, output: socket });
  });
  return () => server.close();
}
