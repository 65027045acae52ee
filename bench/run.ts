/**
 * `npm run bench -- NAME [NAME ...]`: runs bench/NAME.ts, each of which prints JSON lines
 * {"bench","metric","value","unit"} on stdout. Benchmarks are scripts, never tests.
 */
import { readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const known = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3))
  .sort();

const names = process.argv.slice(2);
if (names.length === 0) {
  console.error(`usage: npm run bench -- NAME [NAME ...]; benchmarks: ${known.join(', ')}`);
  process.exit(2);
}
for (const name of names) {
  if (!known.includes(name)) {
    console.error(`unknown benchmark "${name}"; benchmarks: ${known.join(', ')}`);
    process.exit(2);
  }
}
for (const name of names) {
  const mod = (await import(pathToFileURL(join(here, `${name}.ts`)).href)) as { main(): Promise<void> };
  await mod.main();
}
