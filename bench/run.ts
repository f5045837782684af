// `npm run bench`: every benchmark, each figure beside its limit measured in the same run.
//
//   node --import tsx bench/run.ts [--json] [--only NAME]... [--reps N] [--quick] [--profile] [--record]
//
//   --json      one JSON object per figure on stdout (name, value, unit, limit, limitValue,
//               ratio, goal, pass, spread, samples, note); progress and the table go to stderr
//   --only N    run only figures whose name starts with N (a bench name: ring, memory, stack,
//               xen; or a figure: stack.4k-randread-qd32); repeatable, or comma-separated;
//               a trailing $ matches the whole name (stack.1m-seqread-qd4$: not its variants)
//   --reps N    repetitions per figure (default 5; the figure is their median)
//   --quick     smoke run: short samples, 2 repetitions, fewer variants (figures mean little)
//   --profile   record V8 CPU profiles (as node --cpu-prof, minus start-up) of the TypeScript
//               workers while they are measured; print their hot spots (bench/out/profile.txt)
//   --record    rewrite the generated section of BENCHMARKS.md with this run's figures
//
// Always writes bench/out/results.json, bench/out/table.txt and bench/out/ratios.svg.
// A missed goal is reported, never a failure: the exit status is 1 only if a benchmark broke.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { contextMeasure, type Bench, type BenchContext } from './framework/bench.ts';
import type { FigureResult } from './framework/figure.ts';
import { machineInfo } from './framework/machine.ts';
import { jsonFigures, machineText, notesText, table } from './framework/report.ts';
import { ratioChart } from './framework/chart.ts';
import { summarizeProfiles } from './framework/cpuprofile.ts';
import { recordBenchmarks } from './framework/record.ts';
import { ringBench } from './ring.ts';
import { memoryBench } from './memory.ts';
import { stackBench } from './stack.ts';
import { xenBench } from './xen.ts';

/** Every benchmark, in the order they run. */
export const BENCHES: readonly Bench[] = [ringBench, memoryBench, stackBench, xenBench];

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const OUT = path.join(ROOT, 'bench', 'out');

interface Args {
  json: boolean;
  only: string[];
  reps: number | undefined;
  quick: boolean;
  profile: boolean;
  record: boolean;
}

function usage(msg: string): never {
  process.stderr.write(`bench: ${msg}\nusage: node --import tsx bench/run.ts [--json] [--only NAME]... [--reps N] [--quick] [--profile] [--record]\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { json: false, only: [], reps: undefined, quick: false, profile: false, record: false };
  for (let i = 0; i < argv.length; i++) {
    const s = argv[i]!;
    const value = (): string => {
      const eq = s.indexOf('=');
      if (eq >= 0) return s.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) usage(`${s} needs a value`);
      return v;
    };
    const name = s.split('=')[0];
    if (name === '--json') a.json = true;
    else if (name === '--quick') a.quick = true;
    else if (name === '--profile') a.profile = true;
    else if (name === '--record') a.record = true;
    else if (name === '--only') a.only.push(...value().split(',').filter((x) => x !== ''));
    else if (name === '--reps') {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1) usage('--reps takes a positive integer');
      a.reps = n;
    } else usage(`unknown argument ${s}`);
  }
  return a;
}

function commandLine(argv: string[]): string {
  const direct = ['node --import tsx bench/run.ts', ...argv].join(' ');
  if (process.env.npm_lifecycle_event !== 'bench') return direct;
  return `${['npm run bench', ...(argv.length > 0 ? ['--', ...argv] : [])].join(' ')} (= ${direct})`;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const args = parseArgs(argv);
  const reps = args.reps ?? (args.quick ? 2 : 5);
  const machine = machineInfo();
  const started = Date.now();
  fs.mkdirSync(OUT, { recursive: true });
  const profileDir = args.profile ? path.join(OUT, `profile-${new Date(started).toISOString().replace(/[:.]/g, '-')}`) : undefined;
  if (profileDir !== undefined) fs.mkdirSync(profileDir, { recursive: true });

  const results: FigureResult[] = [];
  const notes: string[] = [];
  const errors: string[] = [];
  const log = (msg: string): void => { process.stderr.write(`${msg}\n`); };
  const wants = (name: string): boolean => args.only.length === 0 || args.only.some((f) => (f.endsWith('$') ? name === f.slice(0, -1) : name.startsWith(f)));
  const record = (r: FigureResult): void => {
    results.push(r);
    const ratio = r.ratio === null ? '' : ` = ${r.ratio.toFixed(2)}x ${r.limit}${r.goal === null ? '' : ` (goal ${r.goal}: ${r.pass ? 'pass' : 'MISS'})`}`;
    log(`  ${r.name}: ${r.value.toPrecision(4)} ${r.unit}${ratio}`);
  };
  const ctx: BenchContext = {
    reps,
    quick: args.quick,
    outDir: OUT,
    profileDir,
    wants,
    named: (name) => args.only.length > 0 && wants(name),
    log: (m) => log(`  ${m}`),
    measure: contextMeasure(reps, true, record),
    record,
    note: (t) => { notes.push(t); },
  };

  log(`xenblk bench: ${machineText(machine)}`);
  log(`reps ${reps}${args.quick ? ' (quick smoke run: figures mean little)' : ''}`);
  for (const b of BENCHES) {
    if (args.only.length > 0 && !args.only.some((f) => f.startsWith(b.name) || b.name.startsWith(f.replace(/\$$/, '')))) continue;
    log(`== ${b.name}: ${b.title}`);
    const t0 = Date.now();
    try {
      await b.run(ctx);
    } catch (e) {
      const msg = `${b.name}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
      errors.push(msg);
      log(`  BROKEN ${msg}`);
    }
    log(`   (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
  const durationS = Math.round((Date.now() - started) / 100) / 10;

  const command = commandLine(argv);
  const human = [
    table(results),
    '',
    notesText(results, notes),
    '',
    `machine: ${machineText(machine)}`,
    `command: ${command}  (${durationS} s)`,
    ...errors.map((e) => `BROKEN: ${e.split('\n')[0]}`),
  ].join('\n');
  fs.writeFileSync(path.join(OUT, 'table.txt'), `${human}\n`);
  fs.writeFileSync(path.join(OUT, 'ratios.svg'), ratioChart(results, `xenblk bench ${new Date(started).toISOString().slice(0, 16)}Z: ${machine.nproc} CPUs, ${machine.cpuModel}`));
  const full = { command, startedAt: new Date(started).toISOString(), durationS, reps, quick: args.quick, machine, figures: jsonFigures(results), notes, errors };
  fs.writeFileSync(path.join(OUT, 'results.json'), `${JSON.stringify(full, null, 2)}\n`);

  let profileText = '';
  if (profileDir !== undefined) {
    profileText = summarizeProfiles(profileDir, ROOT);
    fs.writeFileSync(path.join(OUT, 'profile.txt'), profileText);
  }
  if (args.record) recordBenchmarks(path.join(ROOT, 'BENCHMARKS.md'), { command, machine, results, notes, durationS, reps, quick: args.quick, started });

  if (args.json) {
    process.stdout.write(`${JSON.stringify(jsonFigures(results), null, 2)}\n`);
    log(`\n${human}`);
  } else {
    process.stdout.write(`\n${human}\n`);
  }
  if (profileText !== '') log(`\n${profileText}`);
  log(`wrote ${path.relative(ROOT, OUT)}/{results.json,table.txt,ratios.svg}${profileDir !== undefined ? ', profile.txt' : ''}${args.record ? ', BENCHMARKS.md' : ''}`);
  return errors.length > 0 ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (e: unknown) => {
  process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
