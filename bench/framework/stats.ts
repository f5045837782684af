// Order statistics of a handful of repetitions: the median is the figure, the quartiles and
// the extremes are its spread. Linear interpolation between order statistics (type 7, as R's
// default and numpy's), so five samples give a usable IQR.

/** The spread of a set of samples. */
export interface Spread {
  readonly n: number;
  readonly min: number;
  readonly q1: number;
  readonly median: number;
  readonly q3: number;
  readonly max: number;
}

/** `quantile(sorted, q)` is the q-quantile (0..1) of ascending `sorted` samples. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

/** `spread(samples)` is the min, quartiles, median and max of `samples`. */
export function spread(samples: readonly number[]): Spread {
  const s = [...samples].sort((a, b) => a - b);
  return { n: s.length, min: s[0] ?? NaN, q1: quantile(s, 0.25), median: quantile(s, 0.5), q3: quantile(s, 0.75), max: s[s.length - 1] ?? NaN };
}

/** `median(samples)` is the median of `samples`. */
export function median(samples: readonly number[]): number {
  return spread(samples).median;
}
