/**
 * What a fuzz case watches besides the promises of the code under attack: errors that escape the
 * process (an unhandled rejection, an uncaught exception) and that code's log lines at error
 * level (a handler that threw, an activation that failed). Both fuzzers, a hostile driver against
 * the devices and a hostile device against the drivers, fail a case on either.
 */
import { pino } from 'pino';

const errorLines: string[] = [];
const escaped: unknown[] = [];
let watching = false;

/** The logger for the code under attack: its error-level lines are kept for the case's checks. */
export const caseLog = pino({ level: 'error' }, { write: (line: string) => void errorLines.push(line) });

/** Start a case: watch the process (from the first case on) and forget what earlier cases saw. */
export function startCase(): void {
  if (!watching) {
    watching = true;
    process.on('unhandledRejection', (reason) => escaped.push(reason));
    process.on('uncaughtException', (err) => escaped.push(err));
  }
  errorLines.length = 0;
  escaped.length = 0;
}

/** An error as a finding names it: its class and message. */
export function describeError(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** The first error that escaped the process during this case, described; undefined when none did. */
export function firstEscape(): string | undefined {
  return escaped.length > 0 ? describeError(escaped[0]) : undefined;
}

/** The first error-level line the code under attack logged during this case; undefined when none. */
export function firstErrorLine(): string | undefined {
  return errorLines[0];
}
