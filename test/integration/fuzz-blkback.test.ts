// A short run of the blkback fuzzer (test/fuzz/blkback/): a malicious frontend owning the ring
// and its grant table against xenblk's ring service on the memory platform, every oracle of the
// full `npm run fuzz` (answers with the right id, op, status and zero padding; the model's data;
// no map of anything not granted or not named; nothing written into read-only grants; nothing
// left mapped or in flight; halts on req_prod overflow; bounded memory). Fixed seed, so a
// failure prints the command that replays it. Then the same frontend against `xenblk serve` in
// its own process on the simulator (the backend process must survive and answer correctly).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blkbackFuzzer } from '../fuzz/blkback/blkback-fuzzer.ts';
import { blkbackSimFuzzer } from '../fuzz/blkback/blkback-sim-fuzzer.ts';

const SEED = 0x5eed0b0b;
const RINGS = 2500;

test('fuzz blkback: a malicious frontend gets correct answers, never an access to ungranted memory, and the ring stays sane', async (t) => {
  const log: string[] = [];
  const r = await blkbackFuzzer.run({ seed: SEED, iterations: RINGS, log: (line) => log.push(line) });
  const summary = `blkback fuzz (seed ${SEED}): ${r.iterations} ${r.unit}, ${r.findings.length} findings; ` +
    Object.entries(r.counters).map(([k, v]) => `${k}=${v}`).join(' ');
  t.diagnostic(summary);
  console.log(summary);
  assert.deepEqual(
    r.findings.map((f) => `${f.summary}\n  reproduce: ${f.reproduce}\n  ${(f.detail ?? '').split('\n').slice(0, 12).join('\n  ')}`),
    [],
  );
  assert.ok(r.iterations >= RINGS, `ran ${r.iterations} of ${RINGS} rings`);
  // The run reached the hostile paths, not only the happy ones.
  for (const k of ['well-formed', 'flawed', 'chaos', 'ok', 'error', 'eopnotsupp', 'halts', 'teardowns', 'reconnects', 'rewrites', 'storms', 'failed-maps', 'copies', 'mode-replay', 'disk-checks']) {
    assert.ok((r.counters[k] ?? 0) > 0, `the run never produced ${k}: ${summary}`);
  }
});

test('fuzz blkback on the simulator: `xenblk serve` in its own process survives a malicious frontend and answers correctly', { timeout: 180_000 }, async (t) => {
  const r = await blkbackSimFuzzer.run({ seed: SEED, iterations: 250, log: () => {} });
  const summary = `blkback-sim fuzz (seed ${SEED}): ${r.iterations} ${r.unit}, ${r.findings.length} findings; ` +
    Object.entries(r.counters).map(([k, v]) => `${k}=${v}`).join(' ');
  t.diagnostic(summary);
  console.log(summary);
  assert.deepEqual(r.findings.map((f) => `${f.summary}\n  reproduce: ${f.reproduce}\n  ${(f.detail ?? '').split('\n').slice(0, 20).join('\n  ')}`), []);
  assert.ok(r.iterations >= 250, `ran ${r.iterations} of 250 rings`);
  for (const k of ['sessions', 'grant-copy-sessions', 'reconnects', 'disk-checks', 'mode-chaos', 'mode-storm']) {
    assert.ok((r.counters[k] ?? 0) > 0, `the run never produced ${k}: ${summary}`);
  }
});
