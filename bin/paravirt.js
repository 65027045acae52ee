#!/usr/bin/env node
// The command is written in TypeScript: register the tsx loader, then hand over to src/cli/main.ts.
// Imports resolve against this file, so the command works from any working directory.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv);
