// Fuzzer: a malicious frontend against xenblk's blkback data path (issue 8 part 1), in process.
//
// Sessions of a few hundred batches each, every session a random backend configuration (ABI,
// ring order, persistent grants, indirect limit, 512/4096-byte sectors, read-only, flush and
// discard, in-flight bound). One iteration is one "ring": a batch of requests published at
// once (session.ts lists the batch modes and the oracles). The whole run also checks that the
// process's memory stays bounded, and that nothing escapes as an uncaught exception or an
// unhandled rejection. A finding replays with the run's seed and the iteration count it prints.
import v8 from 'node:v8';
import vm from 'node:vm';
import { Rng, budgetLeft, deriveSeed, type Finding, type FuzzOptions, type FuzzResult, type Fuzzer } from '../fuzzer.ts';
import { InProcessSession, randomConfig } from './session.ts';
import type { BatchMode } from './session.ts';

const NAME = 'blkback';
const MODES: readonly (readonly [number, BatchMode])[] = [
  [48, 'clean'], [15, 'race'], [8, 'storm'], [12, 'chaos'], [6, 'jump'], [4, 'replay'], [4, 'teardown'],
];
/** Bound on the heap after a full GC; each session holds a few MiB, sessions are released. */
const MAX_HEAP_BYTES = 512 << 20;
const MAX_FINDINGS = 20;

let gcFn: (() => void) | undefined;
function fullGc(): void {
  if (gcFn === undefined) {
    v8.setFlagsFromString('--expose-gc');
    gcFn = vm.runInNewContext('gc') as () => void;
  }
  gcFn();
}

/** `blkbackFuzzer` fuzzes RingService with a malicious frontend on the memory platform; one iteration is one published ring. */
export const blkbackFuzzer: Fuzzer = {
  name: NAME,
  description: 'malicious frontend (bad ops/segments/sectors/refs, indirect garbage, req_prod jumps, double-fetch rewrites, event storms) against blkback\'s ring service, in process',
  async run(opts: FuzzOptions): Promise<FuzzResult> {
    const started = Date.now();
    const findings: Finding[] = [];
    const counters: Record<string, number> = {
      sessions: 0, rings: 0, requests: 0, 'well-formed': 0, flawed: 0, chaos: 0, ok: 0, error: 0, eopnotsupp: 0,
      halts: 0, teardowns: 0, reconnects: 0, rewrites: 0, storms: 0, maps: 0, copies: 0, 'failed-maps': 0, 'disk-checks': 0, 'max-heap-mb': 0,
    };
    for (const [, m] of MODES) counters[`mode-${m}`] = 0;
    const uncaught: string[] = [];
    const onUncaught = (e: unknown): void => { uncaught.push(`uncaught exception: ${e instanceof Error ? e.stack ?? e.message : String(e)}`); };
    const onRejection = (e: unknown): void => { uncaught.push(`unhandled rejection: ${e instanceof Error ? e.stack ?? e.message : String(e)}`); };
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onRejection);
    let ringsBefore = 0;
    const find = (seed: number, summary: string, detail: string): void => {
      findings.push({
        fuzzer: NAME, seed, summary,
        reproduce: `npm run fuzz -- --only ${NAME} --seed ${opts.seed} --iterations ${ringsBefore + 1}`,
        detail,
      });
      opts.log(`${NAME}: FINDING (ring ${ringsBefore}, seed ${seed}): ${summary}`);
    };
    try {
      for (let si = 0; budgetLeft(opts, started, counters.rings!) && findings.length < MAX_FINDINGS; si++) {
        const sessionSeed = deriveSeed(opts.seed, si);
        const srng = new Rng(sessionSeed);
        const cfg = randomConfig(srng);
        const session = new InProcessSession(cfg, sessionSeed);
        counters.sessions!++;
        const length = 50 + srng.int(400);
        const log: string[] = [`session ${si} (seed ${sessionSeed}): ${session.describe()}`];
        let bad = false;
        for (let bi = 0; bi < length && budgetLeft(opts, started, counters.rings!); bi++) {
          const batchSeed = deriveSeed(sessionSeed, bi + 1);
          const rng = new Rng(batchSeed);
          const mode = rng.weighted(MODES);
          counters[`mode-${mode}`]!++;
          ringsBefore = counters.rings!;
          let problems: string[];
          try {
            problems = await session.batch(rng, mode);
          } catch (e) {
            problems = [`the fuzzer's batch threw (a backend failure surfacing synchronously?): ${e instanceof Error ? e.stack ?? e.message : String(e)}`];
          }
          counters.rings!++;
          log.push(`ring ${ringsBefore} ${mode}`);
          if (log.length > 40) log.splice(1, 1);
          problems.push(...uncaught.splice(0));
          if (bi % 32 === 31 && problems.length === 0) {
            counters['disk-checks']!++;
            const d = session.checkDisk();
            if (d !== undefined) problems.push(d);
          }
          if (problems.length > 0) {
            find(batchSeed, `${mode} ring: ${problems[0]!.slice(0, 400)}${problems.length > 1 ? ` (+${problems.length - 1} more)` : ''}`,
              [`config: ${session.describe()}`, ...problems.map((p) => `problem: ${p}`), '--- recent rings ---', ...log].join('\n'));
            bad = true;
            break;
          }
          if (counters.rings! % 5000 === 0) {
            fullGc();
            const heap = process.memoryUsage().heapUsed;
            counters['max-heap-mb'] = Math.max(counters['max-heap-mb']!, Math.round(heap / 2 ** 20));
            if (heap > MAX_HEAP_BYTES) find(batchSeed, `heap ${heap} bytes after a full GC, over the bound ${MAX_HEAP_BYTES}`, log.join('\n'));
            opts.log(`${NAME}: ${counters.rings} rings, ${counters.requests} requests, ${counters.sessions} sessions, heap ${Math.round(heap / 2 ** 20)} MiB`);
          }
        }
        const closing = await session.close().catch((e: unknown) => [`session close threw: ${e instanceof Error ? e.stack ?? e.message : String(e)}`]);
        closing.push(...uncaught.splice(0));
        if (closing.length > 0 && !bad) {
          find(sessionSeed, `session close: ${closing[0]!.slice(0, 400)}`, [`config: ${session.describe()}`, ...closing, ...log].join('\n'));
        }
        const sc = session.counters;
        counters.requests! += sc.requests;
        counters['well-formed']! += sc.wellFormed;
        counters.flawed! += sc.flawed;
        counters.chaos! += sc.chaos;
        counters.ok! += sc.ok;
        counters.error! += sc.error;
        counters.eopnotsupp! += sc.eopnotsupp;
        counters.halts! += sc.halts;
        counters.teardowns! += sc.teardowns;
        counters.reconnects! += sc.reconnects;
        counters.rewrites! += sc.rewrites;
        counters.storms! += sc.storms;
        counters.maps! += sc.maps;
        counters.copies! += sc.copies;
        counters['failed-maps']! += sc.failedMaps;
      }
      fullGc();
      counters['max-heap-mb'] = Math.max(counters['max-heap-mb']!, Math.round(process.memoryUsage().heapUsed / 2 ** 20));
    } finally {
      // Let anything still scheduled surface before the handlers go.
      await new Promise((r) => setImmediate(r));
      process.off('uncaughtException', onUncaught);
      process.off('unhandledRejection', onRejection);
    }
    if (uncaught.length > 0) find(opts.seed, uncaught[0]!.slice(0, 400), uncaught.join('\n'));
    return { iterations: counters.rings!, unit: 'rings', findings, counters };
  },
};
