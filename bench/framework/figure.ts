// A figure is one number measured next to its limit in the same run: the subject and the limit
// are sampled alternately (A, B, A, B, ...) so that drift of a noisy shared machine hits both,
// the figure is the median of the repetitions, the spread is printed beside it, and the goal
// (a ratio to the limit) is reported as met or missed — never asserted.
import { spread, type Spread } from './stats.ts';

/** A goal on the ratio value / limitValue: at least (`>=`) or at most (`<=`) `ratio`. */
export interface Goal {
  readonly cmp: '>=' | '<=';
  readonly ratio: number;
}

/** What a figure measures. */
export interface FigureSpec {
  /** Dotted name, e.g. `ring.qd32` (stable: tools key on it). */
  readonly name: string;
  /** Unit of value and limitValue, e.g. `round trips/s`, `MiB/s`, `IOPS`, `MiB`. */
  readonly unit: string;
  /** What the limit is, e.g. `C ring.h front+back`; undefined for a figure with no limit. */
  readonly limit?: string;
  readonly goal?: Goal;
  /** Higher values are better (throughput) or lower (memory, latency). */
  readonly better: 'higher' | 'lower';
  /** One line on how it was measured, printed under the table. */
  readonly note?: string;
}

/** A measured figure, as printed and as written by --json. */
export interface FigureResult {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly limit: string | null;
  readonly limitValue: number | null;
  /** value / limitValue (medians), or null without a limit. */
  readonly ratio: number | null;
  /** e.g. `>= 0.5`, or null. */
  readonly goal: string | null;
  /** Whether the goal is met; null without a goal or a limit. */
  readonly pass: boolean | null;
  readonly better: 'higher' | 'lower';
  readonly spread: {
    readonly value: Spread;
    readonly limit: Spread | null;
    /** Of the per-repetition ratios (each subject sample over the limit sample next to it). */
    readonly ratio: Spread | null;
  };
  readonly samples: { readonly value: number[]; readonly limit: number[] | null };
  readonly note: string | null;
}

/** One sample of a subject or a limit: runs the workload once and is its value. */
export type Sampler = () => Promise<number>;

/** What measuring needs from the run. */
export interface MeasureOptions {
  readonly reps: number;
  /** Run subject and limit once, unmeasured, before the repetitions (JIT, caches, page faults). */
  readonly warmup: boolean;
}

/** `goalText(g)` is how a goal is printed, e.g. `>= 0.5`. */
export function goalText(g: Goal | undefined): string | null {
  return g === undefined ? null : `${g.cmp} ${g.ratio}`;
}

/** `meets(g, ratio)` is whether `ratio` meets goal `g`. */
export function meets(g: Goal, ratio: number): boolean {
  return g.cmp === '>=' ? ratio >= g.ratio : ratio <= g.ratio;
}

/**
 * `measure(spec, o, subject, limit)` samples `subject` and `limit` alternately `o.reps` times and
 * is the figure. `limit` may be a number: a fixed budget (e.g. bytes per disk) rather than a
 * measured peer; or undefined for a figure shown without a limit.
 */
export async function measure(spec: FigureSpec, o: MeasureOptions, subject: Sampler, limit?: Sampler | number): Promise<FigureResult> {
  const measured = typeof limit === 'function' ? limit : undefined;
  if (o.warmup) {
    await subject();
    if (measured !== undefined) await measured();
  }
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < o.reps; i++) {
    a.push(await subject());
    if (measured !== undefined) b.push(await measured());
  }
  return figure(spec, a, measured !== undefined ? b : typeof limit === 'number' ? [limit] : undefined);
}

/** `figure(spec, o, values, limits)` is the result for samples already taken (limits[i] beside values[i], or one fixed limit). */
export function figure(spec: FigureSpec, values: number[], limits?: number[]): FigureResult {
  const vs = spread(values);
  const ls = limits !== undefined && limits.length > 0 ? spread(limits) : null;
  const limitValue = ls?.median ?? null;
  const ratio = limitValue !== null && limitValue !== 0 ? vs.median / limitValue : null;
  let ratioSpread: Spread | null = null;
  if (limits !== undefined && limits.length === values.length && limits.length > 1) {
    ratioSpread = spread(values.map((v, i) => v / limits[i]!));
  }
  const pass = spec.goal !== undefined && ratio !== null ? meets(spec.goal, ratio) : null;
  return {
    name: spec.name,
    value: vs.median,
    unit: spec.unit,
    limit: spec.limit ?? null,
    limitValue,
    ratio,
    goal: goalText(spec.goal),
    pass,
    better: spec.better,
    spread: { value: vs, limit: ls, ratio: ratioSpread },
    samples: { value: values, limit: limits ?? null },
    note: spec.note ?? null,
  };
}
