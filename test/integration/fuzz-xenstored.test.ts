// A short run of the xenstored fuzzer (test/fuzz/xenstored/): the in-memory xenstored in its
// own process, hostile concurrent clients, every oracle of the full `npm run fuzz` (no crash,
// well-formed and correct replies, drops only with a reason, no leaked connection/watch/
// transaction, a consistent store, health checks, bounded memory). Fixed seed, so a failure
// prints the command that replays it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { xenstoredFuzzer } from '../fuzz/xenstored/xenstored-fuzzer.ts';

const SEED = 0x5eed0008;
const MESSAGES = 3000;

test('fuzz xenstored: hostile clients get well-formed answers and the server stays up, correct and bounded', async (t) => {
  const log: string[] = [];
  const r = await xenstoredFuzzer.run({ seed: SEED, iterations: MESSAGES, log: (line) => log.push(line) });
  const summary = `xenstored fuzz (seed ${SEED}): ${r.iterations} ${r.unit}, ${r.findings.length} findings; ` +
    Object.entries(r.counters).map(([k, v]) => `${k}=${v}`).join(' ');
  t.diagnostic(summary);
  console.log(summary);
  assert.deepEqual(
    r.findings.map((f) => `${f.summary}\n  reproduce: ${f.reproduce}\n  ...${(f.detail ?? '').split('\n').slice(-10).join('\n  ')}`),
    [],
  );
  assert.ok(r.iterations >= MESSAGES, `ran ${r.iterations} of ${MESSAGES} messages`);
  // The run reached the hostile paths, not only the happy ones.
  for (const k of ['expected-drops', 'events', 'ENOSYS', 'EACCES', 'ENOENT', 'EINVAL', 'health-requests', 'flash-connections']) {
    assert.ok((r.counters[k] ?? 0) > 0, `the run never produced ${k}: ${summary}`);
  }
});
