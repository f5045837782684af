// `npm run fuzz -- [--iterations N] [--seconds S] [--only NAME] [--seed S]`: runs each fuzzer
// (test/fuzz/fuzzers.ts) within the budget, prints a table of fuzzer, iterations, findings and
// seed, writes each finding's evidence under test/.build/fuzz-findings/, and exits non-zero if
// anything was found. Every finding prints the command that replays the run that found it.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { FuzzResult } from './fuzzer.ts';
import { FUZZERS } from './fuzzers.ts';

const FINDINGS_DIR = fileURLToPath(new URL('../.build/fuzz-findings/', import.meta.url));
/** Without a budget, each fuzzer runs this long. */
const DEFAULT_SECONDS = 60;

function usage(): string {
  return `usage: npm run fuzz -- [--iterations N] [--seconds S] [--only NAME] [--seed S]\nfuzzers: ${FUZZERS.map((f) => f.name).join(', ')}\n`;
}

function positive(name: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const v = Number(text);
  if (!/^[0-9]+(\.[0-9]+)?$/.test(text) || !(v > 0)) throw new Error(`--${name} must be a positive number, got '${text}'`);
  return v;
}

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        iterations: { type: 'string' }, seconds: { type: 'string' }, only: { type: 'string' }, seed: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (e) {
    process.stderr.write(`fuzz: ${e instanceof Error ? e.message : String(e)}\n${usage()}`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(usage());
    return 0;
  }
  let iterations: number | undefined;
  let seconds: number | undefined;
  let seed: number;
  try {
    iterations = positive('iterations', args.iterations);
    seconds = positive('seconds', args.seconds);
    if (args.seed !== undefined && !/^(0x[0-9a-fA-F]{1,8}|[0-9]{1,10})$/.test(args.seed)) throw new Error(`--seed must be a uint32, got '${args.seed}'`);
    seed = args.seed !== undefined ? Number(args.seed) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
  } catch (e) {
    process.stderr.write(`fuzz: ${e instanceof Error ? e.message : String(e)}\n`);
    return 2;
  }
  if (iterations === undefined && seconds === undefined) seconds = DEFAULT_SECONDS;
  const selected = args.only === undefined ? FUZZERS : FUZZERS.filter((f) => f.name === args.only);
  if (selected.length === 0) {
    process.stderr.write(`fuzz: no fuzzer named '${args.only}'\n${usage()}`);
    return 2;
  }

  const rows: { name: string; result: FuzzResult | undefined; error?: string; secs: number }[] = [];
  for (const f of selected) {
    process.stdout.write(`fuzz: ${f.name}: ${f.description}\nfuzz: ${f.name}: seed ${seed}, budget ${iterations ?? '-'} iterations / ${seconds ?? '-'} s\n`);
    const t0 = Date.now();
    try {
      const result = await f.run({
        seed, log: (line) => process.stdout.write(`  ${line}\n`),
        ...(iterations !== undefined ? { iterations } : {}), ...(seconds !== undefined ? { seconds } : {}),
      });
      rows.push({ name: f.name, result, secs: (Date.now() - t0) / 1000 });
    } catch (e) {
      rows.push({ name: f.name, result: undefined, error: e instanceof Error ? e.stack ?? e.message : String(e), secs: (Date.now() - t0) / 1000 });
    }
  }

  const table = [['fuzzer', 'iterations', 'unit', 'findings', 'seed', 'seconds']];
  for (const r of rows) {
    table.push([r.name, String(r.result?.iterations ?? '-'), r.result?.unit ?? '-', r.result ? String(r.result.findings.length) : 'ERROR', String(seed), r.secs.toFixed(1)]);
  }
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  process.stdout.write('\n' + table.map((row) => row.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n') + '\n');

  let bad = 0;
  for (const r of rows) {
    if (r.result) {
      process.stdout.write(`${r.name}: ${Object.entries(r.result.counters).map(([k, v]) => `${k}=${v}`).join(' ')}\n`);
    }
    if (r.error !== undefined) {
      bad++;
      process.stdout.write(`\n${r.name}: the fuzzer itself failed:\n${r.error}\n`);
    }
    for (const [i, f] of (r.result?.findings ?? []).entries()) {
      bad++;
      let where = '';
      if (f.detail !== undefined) {
        mkdirSync(FINDINGS_DIR, { recursive: true });
        const file = join(FINDINGS_DIR, `${f.fuzzer}-${seed}-${i}.txt`);
        writeFileSync(file, `${f.summary}\nreproduce: ${f.reproduce}\n\n${f.detail}\n`);
        where = `\n  evidence: ${file}`;
      }
      process.stdout.write(`\nFINDING ${f.fuzzer} (seed ${f.seed}): ${f.summary}\n  reproduce: ${f.reproduce}${where}\n`);
    }
  }
  return bad === 0 ? 0 : 1;
}

main().then((code) => {
  process.exitCode = code;
}, (e: unknown) => {
  process.stderr.write(`fuzz: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
  process.exitCode = 1;
});
