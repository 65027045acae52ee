#!/usr/bin/env node
// The command runs the JavaScript compiled from src/ into dist/ by `npm run build`, which
// `npm ci` and `npm install` run (the `prepare` script). Paths resolve against this file, so the
// command works from any working directory.
import { existsSync } from 'node:fs';
import { URL, fileURLToPath } from 'node:url';

const MAIN = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(MAIN)) {
  process.stderr.write(`paravirt: ${fileURLToPath(MAIN)} is missing: run \`npm run build\` in ${fileURLToPath(new URL('..', import.meta.url))}.\n`);
  process.exit(1);
}
const { main } = await import(MAIN.href);
process.exitCode = await main(process.argv);
