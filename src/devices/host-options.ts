/**
 * The options a device type's host half takes, declared by the device (its registry descriptor)
 * and turned into command-line options by src/cli. Declarations name no command-line library;
 * a parser refuses a value with an OptionError of one sentence naming the option and the value,
 * which the command prints as its only error line.
 */
import { isIP } from 'node:net';
import { parseMac } from './net/wire.ts';

/** A value the user gave is not one the option takes; the message is one sentence. */
export class OptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OptionError';
  }
}

/** One option of a host half: `--image <path>`, `--read-only`, `--lun <spec>` (repeatable). */
export interface OptionSpec {
  /** Flags as a command line shows them: "--queues <n>", "--read-only". */
  readonly flags: string;
  readonly description: string;
  /** Turns the text into a value; throws OptionError. Without it the text is the value. */
  readonly parse?: (value: string) => unknown;
  /** May be given several times: the value is the array of every occurrence, in order. */
  readonly repeatable?: boolean;
  readonly defaultValue?: unknown;
}

/** Parsed option values, keyed by the option's camel-cased long name ("--read-only" → readOnly). */
export type OptionValues = Readonly<Record<string, unknown>>;

/** The camel-cased key of an option's flags, as commander and OptionValues use it. */
export function optionKey(flags: string): string {
  const long = /--([a-z0-9-]+)/.exec(flags)?.[1];
  if (long === undefined) throw new RangeError(`option flags "${flags}" have no --long name`);
  return long.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `values` with every option it lacks at its declared default, as a command line parser would give them. */
export function withDefaults(options: readonly OptionSpec[], values: OptionValues): OptionValues {
  const all: Record<string, unknown> = {};
  for (const o of options) if (o.defaultValue !== undefined) all[optionKey(o.flags)] = o.defaultValue;
  return { ...all, ...values };
}

/** Typed reads of OptionValues; a value of the wrong type is a declaration bug, not the user's. */
export const read = {
  string(values: OptionValues, key: string): string | undefined {
    const v = values[key];
    if (v === undefined || typeof v === 'string') return v;
    throw new TypeError(`option ${key} is not a string`);
  },
  number(values: OptionValues, key: string): number | undefined {
    const v = values[key];
    if (v === undefined || typeof v === 'number') return v;
    throw new TypeError(`option ${key} is not a number`);
  },
  flag(values: OptionValues, key: string): boolean {
    return values[key] === true;
  },
  list<T>(values: OptionValues, key: string, isItem: (v: unknown) => v is T): T[] {
    const v = values[key];
    if (v === undefined) return [];
    if (Array.isArray(v) && v.every(isItem)) return v;
    throw new TypeError(`option ${key} is not a list of the expected values`);
  },
  value<T>(values: OptionValues, key: string, is: (v: unknown) => v is T): T | undefined {
    const v = values[key];
    if (v === undefined || is(v)) return v;
    throw new TypeError(`option ${key} does not hold the expected value`);
  },
};

// --- parsers ---

/** An integer in [min, max], written in decimal. */
export function integerIn(name: string, min: number, max: number): (value: string) => number {
  return (value: string): number => {
    const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new OptionError(`${name} must be an integer from ${min} to ${max}, not "${value}".`);
    }
    return n;
  };
}

/** One of `choices`, as written. */
export function oneOf<T extends string>(name: string, choices: readonly T[]): (value: string) => T {
  return (value: string): T => {
    const found = choices.find((c) => c === value);
    if (found === undefined) throw new OptionError(`${name} must be one of ${choices.join(', ')}, not "${value}".`);
    return found;
  };
}

/** A unicast MAC address, six hexadecimal bytes separated by ':' or '-'. */
export function macAddress(value: string): Uint8Array {
  let mac: Uint8Array;
  try {
    mac = parseMac(value);
  } catch {
    throw new OptionError(`--mac must be six hexadecimal bytes such as 52:54:00:12:34:56, not "${value}".`);
  }
  if ((mac[0] & 1) !== 0) throw new OptionError(`--mac must be a unicast address (first byte even), not "${value}".`);
  return mac;
}

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

export function isEndpoint(v: unknown): v is Endpoint {
  return typeof v === 'object' && v !== null && 'address' in v && 'port' in v;
}

/** An IP address and UDP port: "192.0.2.1:4789" or "[2001:db8::1]:4789". */
export function endpoint(name: string): (value: string) => Endpoint {
  return (value: string) => {
    const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d+)$/.exec(value);
    const address = m?.[1] ?? m?.[2];
    const port = m === null ? Number.NaN : Number(m[3]);
    if (address === undefined || isIP(address) === 0 || !Number.isInteger(port) || port < 1 || port > 0xffff) {
      throw new OptionError(`${name} must be an IP address and a port from 1 to 65535 such as 192.0.2.1:4789, not "${value}".`);
    }
    return { address, port };
  };
}
