// `npm start` runs `xenblk demo` from the bundle: simulator, guest and backend processes, a
// verified workload, a summary, and a clean teardown with exit status 0. Run here both from
// the sources and from a bundle built the way `npm run build` builds dist/xenblk.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { bundleCli, removeCliBundle } from '../support/cli-bundle.ts';
import path from 'node:path';
import { ROOT } from '../support/blkfront-sim.ts';

function runDemo(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    p.stderr.on('data', (b: Buffer) => { out += b.toString(); });
    p.once('exit', (code, sig) => resolve({ code: code ?? (sig ? 128 : 1), out }));
  });
}

function checkSummary(out: string): void {
  assert.match(out, /pattern {3}wrote 16\.8 MB/);
  assert.match(out, /verify {4}read back 16\.8 MB .*identical/);
  assert.match(out, /verify {4}whole disk matches every write of the random phase/);
  assert.match(out, /random I\/O +[0-9,]+ IOPS, read [0-9.]+ MB\/s, write [0-9.]+ MB\/s/);
  assert.match(out, /latency +p50 [0-9.]+ ms +p90 [0-9.]+ ms +p99 [0-9.]+ ms/);
  assert.match(out, /features +x86_64-abi, [0-9]+ queue\(s\) x 16-page ring, indirect 256 segments, persistent grants, flush: flush-cache/);
  assert.match(out, /states walked +front:Initialising -> .*back:InitWait -> front:Initialised -> back:Connected -> front:Connected -> front:Closing -> back:Closing -> front:Closed -> back:Closed/);
  assert.match(out, /demo complete in [0-9.]+ s: every byte verified, everything released/);
}

test('xenblk demo from the sources', async () => {
  const { code, out } = await runDemo(['--import', 'tsx', path.join(ROOT, 'cli/main.ts'), 'demo', '--seconds', '1', '--size', '16']);
  assert.equal(code, 0, out);
  checkSummary(out);
});

test('xenblk demo from the bundle, as npm start runs it', async (t) => {
  const bundle = bundleCli('demo');
  t.after(() => removeCliBundle(bundle));
  const { code, out } = await runDemo([bundle, 'demo', '--seconds', '1', '--size', '16']);
  assert.equal(code, 0, out);
  checkSummary(out);
});
