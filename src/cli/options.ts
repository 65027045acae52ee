/**
 * Parsers for command-line option values. Each refusal is one sentence naming the option and
 * the value, which commander prints as the command's only error line.
 */
import { InvalidArgumentError } from 'commander';
import { isIP } from 'node:net';
import { parseMac } from '../devices/net/wire.ts';

/** An integer in [min, max], written in decimal. */
export function integerIn(name: string, min: number, max: number): (value: string) => number {
  return (value: string): number => {
    const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}, not "${value}".`);
    }
    return n;
  };
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function logLevel(value: string): LogLevel {
  const level = LOG_LEVELS.find((l) => l === value);
  if (level === undefined) {
    throw new InvalidArgumentError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, not "${value}".`);
  }
  return level;
}

/** A unicast MAC address, six hexadecimal bytes separated by ':' or '-'. */
export function macAddress(value: string): Uint8Array {
  let mac: Uint8Array;
  try {
    mac = parseMac(value);
  } catch {
    throw new InvalidArgumentError(`--mac must be six hexadecimal bytes such as 52:54:00:12:34:56, not "${value}".`);
  }
  if ((mac[0] & 1) !== 0) throw new InvalidArgumentError(`--mac must be a unicast address (first byte even), not "${value}".`);
  return mac;
}

/** An IP address and UDP port: "192.0.2.1:4789" or "[2001:db8::1]:4789". */
export function endpoint(name: string): (value: string) => { address: string; port: number } {
  return (value: string) => {
    const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d+)$/.exec(value);
    const address = m?.[1] ?? m?.[2];
    const port = m === null ? Number.NaN : Number(m[3]);
    if (address === undefined || isIP(address) === 0 || !Number.isInteger(port) || port < 1 || port > 0xffff) {
      throw new InvalidArgumentError(`${name} must be an IP address and a port from 1 to 65535 such as 192.0.2.1:4789, not "${value}".`);
    }
    return { address, port };
  };
}
