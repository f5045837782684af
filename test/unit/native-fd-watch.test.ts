// native/fd-watch.ts with either source of uv_poll handles: our addon (native/addon/poll.c, built
// at npm install) and koffi.node.poll. Each case runs in a child process so that both are tried
// in one run (XENBLK_POLL=koffi selects koffi) and so that ref/unref can be seen in whether the
// child exits by itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const ADDON = fileURLToPath(new URL('../../native/addon/build/poll.node', import.meta.url));

// The child: an eventfd written 5 times, each time from a promise job queued by the previous
// callback (so jobs queued in a callback must run before the loop waits again); then close, and a
// second, unref'd watch on a never-readable eventfd that must not keep the process alive.
const CHILD = `
import { FdWatch, pollImplementation } from './native/fd-watch.ts';
import { libc, EFD } from './native/libc.ts';
const fd = libc.eventfd(0, EFD.NONBLOCK);
const idle = libc.eventfd(0, EFD.NONBLOCK);
const b = Buffer.alloc(8);
const kick = () => { b.writeBigUInt64LE(1n); libc.write(fd, b, 8); };
let n = 0;
const w = new FdWatch(fd, () => {
  libc.read(fd, b, 8);
  n++;
  Promise.resolve().then(() => { if (n < 5) kick(); else { w.close(); setTimeout(() => { kick(); setTimeout(() => console.log(JSON.stringify({ impl: pollImplementation, n })), 20); }, 5); } });
});
const quiet = new FdWatch(idle, () => { throw new Error('never readable'); });
quiet.unref();
kick();
`;

function runChild(env: NodeJS.ProcessEnv): { impl: string; n: number } {
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD], { cwd: REPO, env: { ...process.env, ...env }, timeout: 20_000 });
  return JSON.parse(out.toString().trim()) as { impl: string; n: number };
}

test('fd-watch: our poll addon is used when built, and serves events, promise jobs, close and unref', (t) => {
  if (!existsSync(ADDON)) {
    t.diagnostic(`SKIPPED LOUDLY: ${ADDON} is not built (no C compiler at npm install?): run npm run build:addon`);
    t.skip('poll addon not built');
    return;
  }
  const r = runChild({});
  assert.equal(r.impl, 'addon');
  assert.equal(r.n, 5, 'five events, none after close');
});

test('fd-watch: koffi.node.poll serves the same (the fallback without the addon)', () => {
  const r = runChild({ XENBLK_POLL: 'koffi' });
  assert.equal(r.impl, 'koffi');
  assert.equal(r.n, 5, 'five events, none after close');
});
