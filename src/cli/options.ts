/**
 * Parsers for command-line option values. Each refusal is one sentence naming the option and
 * the value, which commander prints as the command's only error line.
 */
import { InvalidArgumentError } from 'commander';

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
