/**
 * npm run fuzz -- --cases N [--device TYPE [--queue NAME] | --driver NAME] [--seed S] [--path P]
 *
 * Plays N adversarial-driver scenarios (adversarial.ts) against every registered device type's
 * fuzz profiles, or one type's with --device (one of its queues with --queue); or, with --driver,
 * N hostile-device scenarios (driver-adversarial.ts) against a guest driver: "core" (the generic
 * driver core and its queues), a device type's, or "all". It prints progress and a summary. On a
 * finding it prints the shrunk scenario, the broken promise and the command that replays exactly
 * that case, and exits 1.
 */
import { Command, InvalidArgumentError } from 'commander';
import fc from 'fast-check';
import { DEVICE_TYPES } from '../../src/devices/registry.ts';
import { type Outcome, property } from './adversarial.ts';
import { type DriverOutcome, driverProperty } from './driver-adversarial.ts';
import { DRIVER_PROFILES } from './driver-scenario.ts';
import { PROFILES } from './scenario.ts';

function positiveInteger(what: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${what} must be a positive integer, not "${value}".`);
    return n;
  };
}

function integer(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`--seed must be an integer, not "${value}".`);
  return n;
}

const options = new Command('fuzz')
  .description('play a hostile driver against the registered device types, or a hostile device against their drivers')
  .option('--device <type>', `attack only this device type (${DEVICE_TYPES.map((t) => t.name).join(', ')})`)
  .option('--queue <name>', 'with --device, attack only this queue of it ("receiveq")')
  .option('--driver <name>', `play a hostile device against this guest driver instead (all, ${DRIVER_PROFILES.map((p) => p.name).join(', ')})`)
  .option('--cases <n>', 'scenarios to play', positiveInteger('--cases'), 1000)
  .option('--seed <s>', 'fast-check seed (default: random)', integer)
  .option('--path <p>', 'replay one counterexample path printed by an earlier run')
  .option('--progress <n>', 'print progress every n cases', positiveInteger('--progress'), 10_000)
  .parse()
  .opts<{ cases: number; device?: string; queue?: string; driver?: string; seed?: number; path?: string; progress: number }>();

const seed = options.seed ?? (Date.now() ^ (Math.random() * 0x1_0000_0000)) | 0;
const started = process.hrtime.bigint();

function seconds(): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}

function progress(played: number): void {
  if (played % options.progress === 0) console.log(`fuzz: ${played}/${options.cases} cases, ${Math.round(played / seconds())}/s, seed ${seed}`);
}

/** The end of a run: its summary line, and on a finding the case and the command that replays it. */
function report<T>(details: fc.RunDetails<T>, summary: Record<string, unknown>, selection: string): void {
  console.log(`fuzz summary: ${JSON.stringify({ cases: details.numRuns, ...summary, seed, seconds: Math.round(seconds() * 10) / 10, findings: details.failed ? 1 : 0 })}`);
  if (!details.failed) return;
  console.log(`finding: ${details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance)}`);
  console.log(`scenario: ${fc.stringify(details.counterexample)}`);
  console.log(`reproduce: npm run fuzz --${selection} --cases 1 --seed ${details.seed} --path ${details.counterexamplePath ?? ''}`);
  process.exit(1);
}

/** --driver: hostile-device scenarios against one driver profile, or all of them. */
async function fuzzDriver(name: string): Promise<void> {
  const profiles = name === 'all' ? DRIVER_PROFILES : DRIVER_PROFILES.filter((p) => p.name === name);
  if (profiles.length === 0) {
    console.error(`fuzz: --driver must be all or one of ${DRIVER_PROFILES.map((p) => p.name).join(', ')}, not "${name}".`);
    process.exit(2);
  }
  const perProfile: Record<string, number> = Object.fromEntries(profiles.map((p) => [p.name, 0]));
  let played = 0;
  let opened = 0;
  let completed = 0;
  let failed = 0;
  let lies = 0;
  let shrinking = false;
  const seen = (o: DriverOutcome): void => {
    played++;
    perProfile[o.profile]++;
    if (o.opened) opened++;
    completed += o.completed;
    failed += o.failed;
    lies += o.lies;
    if (!shrinking) progress(played);
  };
  console.log(`fuzz: ${options.cases} hostile-device cases against drivers ${profiles.map((p) => p.name).join(', ')}, seed ${seed}${options.path === undefined ? '' : `, path ${options.path}`}`);
  const details = await fc.check(driverProperty(seen, profiles), { numRuns: options.cases, seed, path: options.path, reporter: undefined, asyncReporter: undefined });
  shrinking = details.failed;
  report(
    details,
    { perProfile, casesOpened: opened, operationsCompleted: completed, operationsFailedClearly: failed, usedElementsMadeUp: lies },
    ` --driver ${name}`,
  );
}

if (options.driver !== undefined) {
  if (options.device !== undefined) {
    console.error('fuzz: --driver and --device cannot be given together: one attacks a driver, the other a device.');
    process.exit(2);
  }
  await fuzzDriver(options.driver);
  process.exit(0);
}

const ofDevice = options.device === undefined ? PROFILES : PROFILES.filter((p) => p.name.startsWith(`${options.device} `));
if (ofDevice.length === 0) {
  console.error(`fuzz: --device must be one of ${DEVICE_TYPES.map((t) => t.name).join(', ')}, not "${options.device}".`);
  process.exit(2);
}
if (options.queue !== undefined && options.device === undefined) {
  console.error('fuzz: --queue needs --device, whose queue it names.');
  process.exit(2);
}
const profiles = options.queue === undefined ? ofDevice : ofDevice.filter((p) => p.name === `${options.device} ${options.queue}`);
if (profiles.length === 0) {
  console.error(`fuzz: --queue must be one of ${ofDevice.map((p) => p.name.slice(`${options.device} `.length)).join(', ')}, not "${options.queue}".`);
  process.exit(2);
}
const perProfile: Record<string, number> = Object.fromEntries(profiles.map((p) => [p.name, 0]));

let played = 0;
let servedAmidGarbage = 0;
let neededReset = 0;
let maxSteps = 0;
let shrinking = false;

function seen(o: Outcome): void {
  played++;
  perProfile[o.profile]++;
  servedAmidGarbage += o.servedAmidGarbage;
  if (o.neededReset) neededReset++;
  if (o.maxSteps > maxSteps) maxSteps = o.maxSteps;
  if (!shrinking) progress(played);
}

console.log(`fuzz: ${options.cases} cases against ${profiles.map((p) => p.name).join(", ")}, seed ${seed}${options.path === undefined ? "" : `, path ${options.path}`}`);
const details = await fc.check(property(seen, profiles), {
  numRuns: options.cases,
  seed,
  path: options.path,
  // Progress lines stop once shrinking replays cases.
  reporter: undefined,
  asyncReporter: undefined,
});
shrinking = details.failed;
report(
  details,
  {
    perProfile,
    casesEndingInNeedsReset: neededReset,
    wellFormedRequestsServedAmidGarbage: servedAmidGarbage,
    mostTranslationsForOneAction: maxSteps,
  },
  `${options.device === undefined ? '' : ` --device ${options.device}`}${options.queue === undefined ? '' : ` --queue ${options.queue}`}`,
);
