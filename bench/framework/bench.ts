// What a benchmark is to the runner (bench/run.ts): a named group of figures, measured in
// order, each recorded through the context so the table, the JSON and the chart see them all.
import { measure, type FigureResult, type FigureSpec, type Sampler } from './figure.ts';

/** What a benchmark gets from the runner. */
export interface BenchContext {
  /** Repetitions per figure (median of these). */
  readonly reps: number;
  /** A short smoke run: shorter samples, fewer variants; the figures mean little. */
  readonly quick: boolean;
  /** bench/out/: scratch files, profiles, results. */
  readonly outDir: string;
  /** Where workers write CPU profiles when profiling was asked for (--profile). */
  readonly profileDir: string | undefined;
  /** `wants(name)` is whether figure `name` was selected (--only). */
  wants(name: string): boolean;
  /** `named(name)` is whether --only selected figure `name` explicitly (not just by running everything). */
  named(name: string): boolean;
  /** `log(msg)` prints progress on stderr. */
  log(msg: string): void;
  /** `measure(spec, subject, limit)` measures a figure (interleaved with its limit) and records it. */
  measure(spec: FigureSpec, subject: Sampler, limit?: Sampler | number): Promise<FigureResult>;
  /** `record(result)` records a figure measured some other way. */
  record(result: FigureResult): void;
  /** `note(text)` records a remark printed under the table (a setting, a caveat). */
  note(text: string): void;
}

/** A benchmark: a group of figures that share a set-up. */
export interface Bench {
  /** Short name for --only, and the prefix of its figures' names. */
  readonly name: string;
  readonly title: string;
  run(ctx: BenchContext): Promise<void>;
}

/** `contextMeasure` adapts `measure` for contexts (kept here so run.ts stays an entry point). */
export function contextMeasure(reps: number, warmup: boolean, record: (r: FigureResult) => void) {
  return async (spec: FigureSpec, subject: Sampler, limit?: Sampler | number): Promise<FigureResult> => {
    const r = await measure(spec, { reps, warmup }, subject, limit);
    record(r);
    return r;
  };
}
