/**
 * Command-line options: the log level every command takes, and the bridge from a device type's
 * declared options (src/devices/host-options.ts) to commander. Each refusal is one sentence
 * naming the option and the value, which commander prints as the command's only error line.
 */
import { InvalidArgumentError, Option } from 'commander';
import { OptionError, type OptionSpec, integerIn as declaredIntegerIn } from '../devices/host-options.ts';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function logLevel(value: string): LogLevel {
  const level = LOG_LEVELS.find((l) => l === value);
  if (level === undefined) {
    throw new InvalidArgumentError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, not "${value}".`);
  }
  return level;
}

/** A declared parser as commander wants it: an OptionError becomes commander's refusal. */
function forCommander<T>(parse: (value: string) => T): (value: string) => T {
  return (value) => {
    try {
      return parse(value);
    } catch (err) {
      if (err instanceof OptionError) throw new InvalidArgumentError(err.message);
      throw err;
    }
  };
}

/** An integer in [min, max], written in decimal. */
export function integerIn(name: string, min: number, max: number): (value: string) => number {
  return forCommander(declaredIntegerIn(name, min, max));
}

/** Where a server listens: a host name or address and a port (0: any free one). */
export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** "HOST:PORT": "127.0.0.1:7080", "localhost:0", "[::1]:7080" (an IPv6 address in brackets). */
export function listenAddress(name: string): (value: string) => ListenAddress {
  return (value) => {
    const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(value);
    const port = m === null ? Number.NaN : Number(m[3]);
    if (m === null || port > 65535) throw new InvalidArgumentError(`${name} must be HOST:PORT with a port from 0 to 65535, such as 127.0.0.1:7080, not "${value}".`);
    return { host: m[1] ?? m[2], port };
  };
}

/** The commander Option for a declared one. */
export function commanderOption(spec: OptionSpec): Option {
  const option = new Option(spec.flags, spec.description);
  const parse = spec.parse === undefined ? (v: string): unknown => v : forCommander(spec.parse);
  if (spec.repeatable === true) option.argParser((value: string, previous: unknown[] | undefined) => [...(previous ?? []), parse(value)]);
  else if (spec.parse !== undefined) option.argParser(parse);
  if (spec.defaultValue !== undefined) option.default(spec.defaultValue);
  return option;
}
