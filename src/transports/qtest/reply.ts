/**
 * One line from a qtest server, classified. The server (QEMU's system/qtest.c) answers every
 * request with exactly one line, "OK [words...]" on success and "FAIL ..." or "ERR ..." on
 * refusal, in request order; between answers it may emit "IRQ raise N" / "IRQ lower N" whenever
 * an intercepted interrupt line changes level. Nothing else is part of the protocol.
 */

export type Reply =
  | { readonly kind: 'ok'; readonly words: readonly string[] }
  | { readonly kind: 'refused'; readonly message: string }
  | { readonly kind: 'irq'; readonly line: number; readonly raised: boolean };

/** The server sent something the protocol does not allow; the stream cannot be trusted after it. */
export class QtestProtocolError extends Error {
  constructor(detail: string) {
    super(`qtest protocol violation: ${detail}`);
    this.name = 'QtestProtocolError';
  }
}

const IRQ_LINE = /^IRQ (raise|lower) (\d{1,9})$/;

export function parseReply(line: string): Reply {
  if (line.startsWith('IRQ ')) {
    const m = IRQ_LINE.exec(line);
    if (!m) throw new QtestProtocolError(`malformed interrupt line ${JSON.stringify(line)}`);
    return { kind: 'irq', line: Number(m[2]), raised: m[1] === 'raise' };
  }
  if (line === 'OK' || line.startsWith('OK ')) {
    return { kind: 'ok', words: line.split(' ').slice(1).filter((w) => w !== '') };
  }
  for (const word of ['FAIL', 'ERR']) {
    if (line === word || line.startsWith(`${word} `)) {
      return { kind: 'refused', message: line.slice(word.length).trim() || word };
    }
  }
  throw new QtestProtocolError(`unexpected line ${JSON.stringify(line)}`);
}

const HEX = /^0x[0-9a-fA-F]{1,16}$/;
const DECIMAL = /^-?\d{1,20}$/;

/** The one unsigned value a reply carries, printed by the server as 0x-prefixed hex. */
export function hexValue(words: readonly string[], what: string): bigint {
  if (words.length !== 1 || !HEX.test(words[0])) {
    throw new QtestProtocolError(`${what} answered ${JSON.stringify(words.join(' '))}, not one hex value`);
  }
  return BigInt(words[0]);
}

/** The virtual clock in nanoseconds, printed by the server as a signed decimal. */
export function decimalValue(words: readonly string[], what: string): bigint {
  if (words.length !== 1 || !DECIMAL.test(words[0])) {
    throw new QtestProtocolError(`${what} answered ${JSON.stringify(words.join(' '))}, not one decimal value`);
  }
  return BigInt(words[0]);
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Bytes of a b64read reply, which must be exactly `length` long. */
export function base64Value(words: readonly string[], length: number): Uint8Array {
  if (words.length !== 1 || words[0].length % 4 !== 0 || !BASE64.test(words[0])) {
    throw new QtestProtocolError('b64read answered something that is not base64');
  }
  const bytes = Buffer.from(words[0], 'base64');
  if (bytes.length !== length) {
    throw new QtestProtocolError(`b64read of ${length} bytes answered ${bytes.length}`);
  }
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}
