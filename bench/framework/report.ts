// The human table and the machine output of a run.
import type { FigureResult } from './figure.ts';
import type { MachineInfo } from './machine.ts';

/** `fmt(v)` is a number with 3 significant digits and thousands separators (1,234,000 / 12.3 / 0.456). */
export function fmt(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '-';
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString('en-US');
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(3);
}

function ratioText(v: number | null): string {
  return v === null ? '-' : `${v.toFixed(2)}x`;
}

function result(r: FigureResult): string {
  if (r.pass === null) return '-';
  return r.pass ? 'pass' : 'MISS';
}

/** `table(results)` is the human table: one line per figure. */
export function table(results: readonly FigureResult[]): string {
  const head = ['figure', 'value', 'unit', 'spread (min-max)', 'limit', 'limit value', 'ratio', 'ratio spread', 'goal', 'result'];
  const rows = results.map((r) => [
    r.name,
    fmt(r.value),
    r.unit,
    `${fmt(r.spread.value.min)}-${fmt(r.spread.value.max)}`,
    r.limit ?? '-',
    fmt(r.limitValue),
    ratioText(r.ratio),
    r.spread.ratio === null ? '-' : `${r.spread.ratio.min.toFixed(2)}-${r.spread.ratio.max.toFixed(2)}`,
    r.goal ?? '-',
    result(r),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const right = new Set([1, 3, 5, 6, 7]);
  const line = (cells: string[]): string => cells.map((c, i) => (right.has(i) ? c.padStart(w[i]!) : c.padEnd(w[i]!))).join('  ').trimEnd();
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...rows.map(line)].join('\n');
}

/** `notesText(results, notes)` lists how each figure was measured and the run's remarks. */
export function notesText(results: readonly FigureResult[], notes: readonly string[]): string {
  const out: string[] = [];
  for (const r of results) if (r.note !== null) out.push(`- ${r.name}: ${r.note}`);
  for (const n of notes) out.push(`- ${n}`);
  return out.join('\n');
}

/** One object per figure, as --json prints them. */
export function jsonFigures(results: readonly FigureResult[]): object[] {
  return results.map((r) => ({
    name: r.name,
    value: r.value,
    unit: r.unit,
    limit: r.limit,
    limitValue: r.limitValue,
    ratio: r.ratio,
    goal: r.goal,
    pass: r.pass,
    spread: r.spread,
    samples: r.samples,
    note: r.note,
  }));
}

/** `machineText(m)` is the machine line recorded with the figures. */
export function machineText(m: MachineInfo): string {
  return `${m.nproc} CPUs (${m.cpuModel}), ${m.memAvailableMiB} MiB available of ${m.memTotalMiB} MiB, ${m.kernel}, node ${m.node}, load average ${m.loadAverage} at start`;
}
