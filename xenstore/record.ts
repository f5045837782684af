// Typed records: a directory of XenStore keys read into one validated object. The zod object
// schema names the keys (`sectors`, `sector-size`, `feature-flush-cache`, ...); each key is
// read from `<dir>/<key>` and parsed by its field schema, and a missing or malformed key gives
// a XenstoreRecordError naming the full path and the value seen.
import { z } from 'zod';
import { XenstoreRecordError } from './errors.ts';
import type { XenstoreOps } from './xenstore.ts';

/** Field schemas for the value forms XenStore keys use. */
export const xsField = {
  /** A decimal unsigned integer up to 2^53 (sectors, ring-ref, event-channel, state...). */
  uint: () => z.string().regex(/^(0|[1-9][0-9]*)$/, 'expected a decimal unsigned integer')
    .transform(Number).refine(Number.isSafeInteger, 'integer too large'),
  /** A decimal unsigned integer that may exceed 2^53, as a bigint. */
  bigUint: () => z.string().regex(/^(0|[1-9][0-9]*)$/, 'expected a decimal unsigned integer').transform((s) => BigInt(s)),
  /** A feature flag: "1" is true, "0" is false (Linux's xenbus_read_unsigned convention). */
  flag: () => z.enum(['0', '1']).transform((s) => s === '1'),
  /** Any string. */
  string: () => z.string(),
} as const;

/** `readRecord(xs, dir, schema)` is the keys of `schema` read under `dir` and validated; use a transaction's ops for a consistent snapshot. */
export async function readRecord<S extends z.ZodObject>(xs: XenstoreOps, dir: string, schema: S): Promise<z.output<S>> {
  const base = dir.endsWith('/') ? dir.slice(0, -1) : dir;
  const shape = schema.shape as Record<string, z.ZodType>;
  const keys = Object.keys(shape);
  const values = await Promise.all(keys.map((k) => xs.tryRead(`${base}/${k}`)));
  const out: Record<string, unknown> = {};
  keys.forEach((k, i) => {
    const path = `${base}/${k}`;
    const value = values[i];
    const r = shape[k]!.safeParse(value);
    if (!r.success) throw new XenstoreRecordError(path, value, r.error.issues.map((iss) => iss.message).join('; '));
    if (r.data !== undefined) out[k] = r.data;
  });
  return out as z.output<S>;
}

/** `writeRecord(xs, dir, values)` writes each defined value as `<dir>/<key>` (stringified); use inside a transaction. */
export async function writeRecord(xs: XenstoreOps, dir: string, values: Record<string, string | number | bigint | boolean | undefined>): Promise<void> {
  const base = dir.endsWith('/') ? dir.slice(0, -1) : dir;
  for (const [k, v] of Object.entries(values)) {
    if (v === undefined) continue;
    await xs.write(`${base}/${k}`, typeof v === 'boolean' ? (v ? '1' : '0') : String(v));
  }
}
