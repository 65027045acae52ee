/**
 * A QMP client (QEMU Machine Protocol: JSON objects, one per line, over a stream socket).
 * The socket is usually one QEMU connected to (`-chardev socket,server=off`), so the greeting
 * is already on its way when this object is made.
 */
import type { Socket } from 'node:net';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  override name = 'QmpError';
  constructor(readonly command: string, readonly errorClass: string, desc: string) {
    super(`QMP ${command} failed: ${errorClass}: ${desc}`);
  }
}

/** Events nobody waited for are kept for a later nextEvent(); the oldest go first past this many. */
const MAX_QUEUED_EVENTS = 1000;

interface Pending { command: string; resolve(v: unknown): void; reject(e: Error): void }

type QmpMessage = {
  QMP?: unknown;
  id?: number;
  return?: unknown;
  error?: { class: string; desc: string };
} & Partial<QmpEvent>;

export class QmpClient {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly events: QmpEvent[] = [];
  private readonly eventWaiters: { name: string; resolve(e: QmpEvent): void }[] = [];
  private closedError: Error | undefined;
  private readonly greeted: Promise<void>;

  constructor(private readonly socket: Socket) {
    let greet!: () => void;
    this.greeted = new Promise((resolve) => (greet = resolve));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (line) this.dispatch(JSON.parse(line) as QmpMessage, greet);
      }
    });
    const fail = (err: Error): void => {
      this.closedError ??= err;
      for (const p of this.pending.values()) p.reject(new Error(`QMP ${p.command}: ${err.message}`));
      this.pending.clear();
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('QEMU closed the QMP connection')));
  }

  /** Waits for the greeting and leaves capabilities negotiation mode. */
  async negotiate(): Promise<void> {
    await this.greeted;
    await this.execute('qmp_capabilities');
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.closedError) return Promise.reject(new Error(`QMP ${command}: ${this.closedError.message}`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { command, resolve, reject });
      this.socket.write(JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id }) + '\n');
    });
  }

  /** Resolves with the first event named `name` received since the last call that consumed one. */
  nextEvent(name: string): Promise<QmpEvent> {
    const i = this.events.findIndex((e) => e.event === name);
    if (i >= 0) return Promise.resolve(this.events.splice(i, 1)[0]);
    return new Promise((resolve) => this.eventWaiters.push({ name, resolve }));
  }

  private dispatch(msg: QmpMessage, greet: () => void): void {
    if (msg.QMP !== undefined) {
      greet();
      return;
    }
    if (msg.event !== undefined) {
      const event: QmpEvent = { event: msg.event, data: msg.data, timestamp: msg.timestamp };
      const w = this.eventWaiters.findIndex((x) => x.name === event.event);
      if (w >= 0) this.eventWaiters.splice(w, 1)[0].resolve(event);
      else if (this.events.push(event) > MAX_QUEUED_EVENTS) this.events.shift();
      return;
    }
    if (msg.id === undefined) return;
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    if (msg.error) p.reject(new QmpError(p.command, msg.error.class, msg.error.desc));
    else p.resolve(msg.return);
  }
}
