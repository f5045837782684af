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
import { mkfifo, openFifoReader, openFifoWriter, ringFifo } from './native/fifo.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
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
// Input modes. A FIFO holding 5 bytes, read through a 3-byte buffer: the watch reads 3, calls
// back with 3, and (level-triggered) again with the other 2. Then an echo watch on a second
// FIFO: it reads the 4 bytes and writes them back before calling back, so they are still there.
const fifo = (name) => { const p = path.join(dir, name); mkfifo(p); return openFifoReader(p); };
const dir = mkdtempSync(path.join(tmpdir(), 'xenblk-fdwatch-'));
const a = fifo('a');
libc.write(a, Buffer.from([1, 2, 3, 4, 5]), 5);
const got = [];
const small = new Uint8Array(3);
const reader = new FdWatch(a, (k) => {
  got.push([k, ...small.subarray(0, k)]);
  if (got.length < 2) return;
  reader.close();
  const e = fifo('e');
  libc.write(e, Buffer.from([9, 8, 7, 6]), 4);
  const ebuf = new Uint8Array(16);
  const echo = new FdWatch(e, (k2) => {
    echo.close();
    const back = new Uint8Array(16);
    const again = libc.read(e, back, 16);
    // ringFifo (through the addon's kick when it is loaded, else koffi's write).
    const k = fifo('k');
    const w1 = openFifoWriter(path.join(dir, 'k'));
    const rung = [ringFifo(w1), ringFifo(w1)];
    const kb = new Uint8Array(8);
    const kicked = [...kb.subarray(0, Math.max(0, libc.read(k, kb, 8)))];
    rmSync(dir, { recursive: true });
    console.log(JSON.stringify({ input: { got, echoed: [k2, ...ebuf.subarray(0, k2)], again: [...back.subarray(0, again)], rung, kicked } }));
  }, { buffer: ebuf, echo: true });
}, { buffer: small });
`;

interface ChildResult {
  impl: string;
  n: number;
  input: { got: number[][]; echoed: number[]; again: number[]; rung: string[]; kicked: number[] };
}

function runChild(env: NodeJS.ProcessEnv): ChildResult {
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD], { cwd: REPO, env: { ...process.env, ...env }, timeout: 20_000 });
  // Two lines, in either order: the eventfd case and the input case.
  const lines = out.toString().trim().split('\n').map((l) => JSON.parse(l) as Partial<ChildResult>);
  return Object.assign({}, ...lines) as ChildResult;
}

/** What both implementations must show for the input modes (see the child). */
function assertInput(r: ChildResult): void {
  assert.deepEqual(r.input.got, [[3, 1, 2, 3], [2, 4, 5]], 'read 3 bytes, then the 2 left on the next wake-up');
  assert.deepEqual(r.input.echoed, [4, 9, 8, 7, 6], 'the echo watch read all 4 bytes');
  assert.deepEqual(r.input.again, [9, 8, 7, 6], 'and wrote them back before calling back');
  assert.deepEqual(r.input.rung, ['ok', 'ok']);
  assert.deepEqual(r.input.kicked, [1, 1], 'ringFifo wrote one byte 1 each time');
}

test('fd-watch: our poll addon is used when built, and serves events, promise jobs, close, unref, and reads (and echoes) input', (t) => {
  if (!existsSync(ADDON)) {
    t.diagnostic(`SKIPPED LOUDLY: ${ADDON} is not built (no C compiler at npm install?): run npm run build:addon`);
    t.skip('poll addon not built');
    return;
  }
  const r = runChild({});
  assert.equal(r.impl, 'addon');
  assert.equal(r.n, 5, 'five events, none after close');
  assertInput(r);
});

test('fd-watch: koffi.node.poll serves the same (the fallback without the addon)', () => {
  const r = runChild({ XENBLK_POLL: 'koffi' });
  assert.equal(r.impl, 'koffi');
  assert.equal(r.n, 5, 'five events, none after close');
  assertInput(r);
});
