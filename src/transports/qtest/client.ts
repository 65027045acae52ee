/**
 * A client for QEMU's qtest protocol (system/qtest.c): a line-oriented request/reply protocol
 * on a character device through which a test drives a machine whose CPUs do not run — it reads
 * and writes guest-physical memory, performs port I/O and observes interrupt lines.
 *
 * The client is handed the two directions of an established stream (a socket, or the stdio pipes
 * of a child process) and never manages processes itself. Requests are written at once, so calls
 * that are not awaited are pipelined; the server answers strictly in order, so each answer settles
 * the oldest outstanding request.
 *
 * QEMU aborts (g_assert) on a malformed request rather than answering it, so every argument is
 * validated here before anything is written: a bad address, width or path is a RangeError in the
 * caller, never a dead QEMU.
 */
import type { Readable, Writable } from 'node:stream';
import type { GuestBus, InterruptListener } from './guest-bus.ts';
import { QtestProtocolError, base64Value, decimalValue, hexValue, parseReply } from './reply.ts';

/** The server refused a request ("FAIL ..." or "ERR ..."). */
export class QtestCommandError extends Error {
  constructor(
    readonly command: string,
    readonly reason: string,
  ) {
    super(`qtest refused "${command}": ${reason}`);
    this.name = 'QtestCommandError';
  }
}

/** The stream ended, failed or was closed before the request was answered. */
export class QtestClosedError extends Error {
  constructor(reason: string) {
    super(`qtest connection closed: ${reason}`);
    this.name = 'QtestClosedError';
  }
}

/**
 * Largest piece of guest memory moved by one request. Bounds the length of every line either side
 * writes (4/3 of this in base64); larger transfers become several pipelined requests.
 */
export const TRANSFER_CHUNK = 64 * 1024;

/** A longer line than this from the server can only be garbage: no valid answer comes close. */
const MAX_LINE = 4 * TRANSFER_CHUNK;

/** Highest port number (the x86 I/O space is 64 KiB; QEMU asserts on anything above). */
const MAX_PORT = 0xffff;

interface Pending {
  readonly command: string;
  resolve(words: readonly string[]): void;
  reject(error: Error): void;
}

function checkAddress(addr: number, length: number): void {
  if (!Number.isSafeInteger(addr) || addr < 0) {
    throw new RangeError(`guest address ${addr} is not a non-negative integer below 2^53`);
  }
  if (!Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(addr + length)) {
    throw new RangeError(`length ${length} at 0x${addr.toString(16)} is not a non-negative integer that stays below 2^53`);
  }
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > MAX_PORT) {
    throw new RangeError(`I/O port ${port} is outside 0..0xffff`);
  }
}

function checkValue(value: number, bits: 8 | 16 | 32): void {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
    throw new RangeError(`value ${value} does not fit in ${bits} bits`);
  }
}

/** A request word must be one word: the server splits lines on single spaces. */
function checkWord(word: string, what: string): void {
  if (!/^[\x21-\x7e]+$/.test(word)) {
    throw new RangeError(`${what} ${JSON.stringify(word)} must be non-empty printable ASCII without spaces`);
  }
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

export class QtestClient implements GuestBus {
  private readonly pending: Pending[] = [];
  private readonly listeners = new Set<InterruptListener>();
  private readonly levels = new Map<number, boolean>();
  private partial = '';
  private closedReason: string | undefined;
  private readonly onData = (chunk: Buffer | string): void => this.receive(chunk);
  private readonly onEnd = (): void => this.shutdown(new QtestClosedError('the server ended the stream'));
  private readonly onError = (error: Error): void => this.shutdown(new QtestClosedError(error.message));

  /**
   * @param input what the server writes (its replies)
   * @param output where requests go
   */
  constructor(
    private readonly input: Readable,
    private readonly output: Writable,
  ) {
    input.on('data', this.onData);
    input.on('end', this.onEnd);
    input.on('close', this.onEnd);
    input.on('error', this.onError);
    output.on('error', this.onError);
  }

  /** Whether the client still accepts requests. */
  get open(): boolean {
    return this.closedReason === undefined;
  }

  /**
   * Sends one request made of `words` and resolves with the words after "OK".
   * Prefer the typed methods; this is for commands the client does not wrap.
   */
  command(...words: string[]): Promise<readonly string[]> {
    if (words.length === 0) return Promise.reject(new RangeError('a qtest request needs a command word'));
    try {
      words.forEach((w, i) => checkWord(w, i === 0 ? 'command' : 'argument'));
    } catch (error) {
      return Promise.reject(error);
    }
    const command = words.join(' ');
    if (this.closedReason !== undefined) return Promise.reject(new QtestClosedError(this.closedReason));
    return new Promise((resolve, reject) => {
      this.pending.push({ command, resolve, reject });
      this.output.write(`${command}\n`);
    });
  }

  /** Stops using the stream and fails every outstanding request. The caller still owns the stream. */
  close(): void {
    this.shutdown(new QtestClosedError('closed by the client'));
  }

  // ---- guest memory -------------------------------------------------------------------------

  async read(addr: number, length: number): Promise<Uint8Array> {
    checkAddress(addr, length);
    const out = new Uint8Array(length);
    const pieces: Promise<void>[] = [];
    for (let at = 0; at < length; at += TRANSFER_CHUNK) {
      const size = Math.min(TRANSFER_CHUNK, length - at);
      pieces.push(this.command('b64read', hex(addr + at), hex(size)).then((w) => out.set(base64Value(w, size), at)));
    }
    await Promise.all(pieces);
    return out;
  }

  async write(addr: number, bytes: Uint8Array): Promise<void> {
    checkAddress(addr, bytes.length);
    const pieces: Promise<unknown>[] = [];
    for (let at = 0; at < bytes.length; at += TRANSFER_CHUNK) {
      const piece = bytes.subarray(at, at + TRANSFER_CHUNK);
      const b64 = Buffer.from(piece.buffer, piece.byteOffset, piece.length).toString('base64');
      pieces.push(this.command('b64write', hex(addr + at), hex(piece.length), b64));
    }
    await Promise.all(pieces);
  }

  async fill(addr: number, length: number, byte: number): Promise<void> {
    checkAddress(addr, length);
    checkValue(byte, 8);
    await this.command('memset', hex(addr), hex(length), hex(byte));
  }

  readU8(addr: number): Promise<number> {
    return this.load('readb', addr, 1).then(Number);
  }
  readU16(addr: number): Promise<number> {
    return this.load('readw', addr, 2).then(Number);
  }
  readU32(addr: number): Promise<number> {
    return this.load('readl', addr, 4).then(Number);
  }
  readU64(addr: number): Promise<bigint> {
    return this.load('readq', addr, 8);
  }

  async writeU8(addr: number, value: number): Promise<void> {
    checkValue(value, 8);
    return this.store('writeb', addr, 1, value);
  }
  async writeU16(addr: number, value: number): Promise<void> {
    checkValue(value, 16);
    return this.store('writew', addr, 2, value);
  }
  async writeU32(addr: number, value: number): Promise<void> {
    checkValue(value, 32);
    return this.store('writel', addr, 4, value);
  }
  async writeU64(addr: number, value: bigint): Promise<void> {
    if (value < 0n || value >= 1n << 64n) throw new RangeError(`value ${value} does not fit in 64 bits`);
    return this.store('writeq', addr, 8, value);
  }

  // ---- port I/O -----------------------------------------------------------------------------

  inU8(port: number): Promise<number> {
    return this.portIn('inb', port, 8);
  }
  inU16(port: number): Promise<number> {
    return this.portIn('inw', port, 16);
  }
  inU32(port: number): Promise<number> {
    return this.portIn('inl', port, 32);
  }
  outU8(port: number, value: number): Promise<void> {
    return this.portOut('outb', port, value, 8);
  }
  outU16(port: number, value: number): Promise<void> {
    return this.portOut('outw', port, value, 16);
  }
  outU32(port: number, value: number): Promise<void> {
    return this.portOut('outl', port, value, 32);
  }

  // ---- interrupts ---------------------------------------------------------------------------

  /**
   * Intercepts the inbound interrupt pins of the device at `qomPath` (on a PC, "ioapic": every GSI),
   * after which each level change arrives as an interrupt event. QEMU allows one intercepted device.
   */
  async interceptIrqIn(qomPath: string): Promise<void> {
    await this.command('irq_intercept_in', qomPath);
  }

  /** Intercepts the outbound pins of `qomPath` (the unnamed list, or the named one). */
  async interceptIrqOut(qomPath: string, gpioName?: string): Promise<void> {
    await (gpioName === undefined
      ? this.command('irq_intercept_out', qomPath)
      : this.command('irq_intercept_out', qomPath, gpioName));
  }

  /** Forces inbound pin `num` of list `gpioName` ("unnamed-gpio-in" for the unnamed list) to `level`. */
  async setIrqIn(qomPath: string, gpioName: string, num: number, level: number): Promise<void> {
    if (!Number.isInteger(num) || num < 0 || num > 0x7fffffff) throw new RangeError(`interrupt number ${num} is not a non-negative int`);
    if (!Number.isInteger(level) || Math.abs(level) > 0x7fffffff) throw new RangeError(`interrupt level ${level} is not an int`);
    await this.command('set_irq_in', qomPath, gpioName, String(num), String(level));
  }

  interruptLevel(line: number): boolean {
    return this.levels.get(line) ?? false;
  }

  onInterrupt(listener: InterruptListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---- virtual clock (only when QEMU runs with the qtest accelerator) -----------------------

  /** Advances the virtual clock by `ns`, or to the next timer deadline; resolves with the new clock. */
  async clockStep(ns?: bigint): Promise<bigint> {
    if (ns !== undefined && (ns < 0n || ns >= 1n << 63n)) throw new RangeError(`clock step ${ns} ns is not a non-negative int64`);
    const words = await (ns === undefined ? this.command('clock_step') : this.command('clock_step', String(ns)));
    return decimalValue(words, 'clock_step');
  }

  /** Advances the virtual clock to `ns` (never backwards); resolves with the new clock. */
  async clockSet(ns: bigint): Promise<bigint> {
    if (ns < 0n || ns >= 1n << 63n) throw new RangeError(`clock value ${ns} ns is not a non-negative int64`);
    return decimalValue(await this.command('clock_set', String(ns)), 'clock_set');
  }

  /** Byte order of the target's CPU, which is the order of the sized accesses above. */
  async endianness(): Promise<'little' | 'big'> {
    const words = await this.command('endianness');
    if (words.length !== 1 || (words[0] !== 'little' && words[0] !== 'big')) {
      throw new QtestProtocolError(`endianness answered ${JSON.stringify(words.join(' '))}`);
    }
    return words[0];
  }

  // ---- internals ----------------------------------------------------------------------------

  private async load(op: string, addr: number, size: number): Promise<bigint> {
    checkAddress(addr, size);
    return hexValue(await this.command(op, hex(addr)), op);
  }

  private async store(op: string, addr: number, size: number, value: number | bigint): Promise<void> {
    checkAddress(addr, size);
    await this.command(op, hex(addr), hex(value));
  }

  private async portIn(op: string, port: number, bits: 8 | 16 | 32): Promise<number> {
    checkPort(port);
    const value = hexValue(await this.command(op, hex(port)), op);
    if (value >= 1n << BigInt(bits)) throw new QtestProtocolError(`${op} answered ${hex(value)}, wider than ${bits} bits`);
    return Number(value);
  }

  private async portOut(op: string, port: number, value: number, bits: 8 | 16 | 32): Promise<void> {
    checkPort(port);
    checkValue(value, bits);
    await this.command(op, hex(port), hex(value));
  }

  private receive(chunk: Buffer | string): void {
    // The protocol is ASCII; latin1 maps bytes one to one, so a chunk boundary can never split a character.
    this.partial += typeof chunk === 'string' ? chunk : chunk.toString('latin1');
    let newline: number;
    while (this.closedReason === undefined && (newline = this.partial.indexOf('\n')) >= 0) {
      const line = this.partial.slice(0, newline);
      this.partial = this.partial.slice(newline + 1);
      this.dispatch(line);
    }
    if (this.partial.length > MAX_LINE) {
      this.shutdown(new QtestProtocolError(`a line longer than ${MAX_LINE} characters`));
    }
  }

  private dispatch(line: string): void {
    let reply;
    try {
      reply = parseReply(line);
    } catch (error) {
      this.shutdown(error as QtestProtocolError);
      return;
    }
    if (reply.kind === 'irq') {
      // The server reports changes only, but a listener must never see a repeated level.
      if (this.interruptLevel(reply.line) === reply.raised) return;
      this.levels.set(reply.line, reply.raised);
      for (const listener of [...this.listeners]) listener({ line: reply.line, raised: reply.raised });
      return;
    }
    const request = this.pending.shift();
    if (request === undefined) {
      this.shutdown(new QtestProtocolError(`an answer nobody asked for: ${JSON.stringify(line)}`));
      return;
    }
    if (reply.kind === 'ok') request.resolve(reply.words);
    else request.reject(new QtestCommandError(request.command, reply.message));
  }

  private shutdown(error: Error): void {
    if (this.closedReason !== undefined) return;
    this.closedReason = error.message;
    this.input.off('data', this.onData);
    this.input.off('end', this.onEnd);
    this.input.off('close', this.onEnd);
    // The error listeners stay: a stream that fails after we stopped using it must not crash the process.
    for (const request of this.pending.splice(0)) request.reject(error);
  }
}
