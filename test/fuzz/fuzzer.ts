// The shape every fuzzer has, so that `npm run fuzz` (test/fuzz/run.ts) and the short runs in
// test/integration/fuzz-*.test.ts drive them alike: a fuzzer gets a budget (iterations and/or
// seconds) and a seed, and returns how much it did and what it found. A finding always carries
// a seed and a command that replays the run that found it.

/** `FuzzOptions` is a fuzzer's budget: it stops at whichever of `iterations` / `seconds` comes first. */
export interface FuzzOptions {
  /** Upper bound on iterations (the fuzzer's own unit, e.g. messages or rings). */
  readonly iterations?: number;
  /** Upper bound on wall-clock seconds. */
  readonly seconds?: number;
  /** Everything random derives from this seed. */
  readonly seed: number;
  /** Progress and diagnostics, one line each. */
  readonly log: (line: string) => void;
}

/** `Finding` is one oracle violation, with what is needed to reproduce it. */
export interface Finding {
  readonly fuzzer: string;
  /** One line: what went wrong. */
  readonly summary: string;
  /** The seed of the smallest unit of work (batch, ring...) that shows it. */
  readonly seed: number;
  /** A shell command that reruns that unit. */
  readonly reproduce: string;
  /** Evidence: the messages sent, the bytes received, the server's stderr... */
  readonly detail?: string;
}

/** `FuzzResult` is what one run did: iterations in `unit`, findings, and fuzzer-specific counters. */
export interface FuzzResult {
  readonly iterations: number;
  readonly unit: string;
  readonly findings: readonly Finding[];
  readonly counters: Readonly<Record<string, number>>;
}

/** `Fuzzer` is one fuzz target. */
export interface Fuzzer {
  readonly name: string;
  /** One line: the target and the oracles. */
  readonly description: string;
  run(opts: FuzzOptions): Promise<FuzzResult>;
}

/** `Rng` is a small deterministic PRNG (mulberry32) with the draws fuzzers need. */
export class Rng {
  private a: number;

  constructor(seed: number) {
    this.a = seed >>> 0;
  }

  /** `next()` is a float in [0, 1). */
  next(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** `int(n)` is an integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** `u32()` is a uniform 32-bit unsigned integer. */
  u32(): number {
    return (this.int(0x10000) * 0x10000 + this.int(0x10000)) >>> 0;
  }

  /** `chance(p)` is true with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** `pick(xs)` is a uniformly chosen element of non-empty `xs`. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  /** `weighted(table)` is a value drawn with the given relative weights. */
  weighted<T>(table: readonly (readonly [weight: number, value: T])[]): T {
    const total = table.reduce((s, [w]) => s + w, 0);
    let r = this.next() * total;
    for (const [w, v] of table) {
      if (r < w) return v;
      r -= w;
    }
    return table[table.length - 1]![1];
  }

  /** `bytes(n)` is `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
}

/** `deriveSeed(seed, index)` is a well-mixed seed for unit `index` of a run seeded with `seed`. */
export function deriveSeed(seed: number, index: number): number {
  let h = (seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** `budgetLeft(opts, started, done)` is whether a run that began at `started` and did `done` iterations may go on. */
export function budgetLeft(opts: FuzzOptions, started: number, done: number): boolean {
  if (opts.iterations !== undefined && done >= opts.iterations) return false;
  if (opts.seconds !== undefined && (Date.now() - started) / 1000 >= opts.seconds) return false;
  return true;
}
