// A short run of the blkfront fuzzer (test/fuzz/blkfront/): a hostile backend (bad, duplicate
// and stale ids, wrong ops, rsp_prod jumps, error statuses, silence, late answers, garbage keys
// and states) against xenblk's Blkfront on the memory platform with an in-process xenstored,
// every oracle of the full `npm run fuzz` (errors typed and naming the garbage, AbortSignal
// honoured, reads resolved only with the disk's data, buffers untouched after a failure or an
// abort, the device disabled exactly on protocol breaks, nothing left granted or bound).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blkfrontFuzzer } from '../fuzz/blkfront/blkfront-fuzzer.ts';

const SEED = 0x5eed0f0f;
const SESSIONS = 45;

test('fuzz blkfront: a hostile backend gets typed errors, never another request\'s data, and nothing leaks', async (t) => {
  const log: string[] = [];
  const r = await blkfrontFuzzer.run({ seed: SEED, iterations: SESSIONS, log: (line) => log.push(line) });
  const summary = `blkfront fuzz (seed ${SEED}): ${r.iterations} ${r.unit}, ${r.findings.length} findings; ` +
    Object.entries(r.counters).map(([k, v]) => `${k}=${v}`).join(' ');
  t.diagnostic(summary);
  console.log(summary);
  assert.deepEqual(
    r.findings.map((f) => `${f.summary}\n  reproduce: ${f.reproduce}\n  ${(f.detail ?? '').split('\n').slice(0, 12).join('\n  ')}`),
    [],
  );
  assert.ok(r.iterations >= SESSIONS, `ran ${r.iterations} of ${SESSIONS} sessions`);
  for (const k of ['sessions-io', 'sessions-garbage', 'sessions-stuck', 'breaks', 'aborts', 'err-ABORT_ERR', 'err-EPROTO', 'err-EIO', 'attach-EPROTO', 'ok']) {
    assert.ok((r.counters[k] ?? 0) > 0, `the run never produced ${k}: ${summary}`);
  }
});
