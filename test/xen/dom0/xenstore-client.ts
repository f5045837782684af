// Run in dom0 by test/xen/tests/xenstore-client.sh: xenblk's XenStore client (xenstore/connect.ts)
// against Xen's own C xenstored, over the xenstored socket and over /dev/xen/xenbus (the
// kernel's xenbus device, as a guest would reach xenstored). Every value is cross-checked with
// Xen's C tools (xenstore-read/-write/-list/-ls), a reader and writer nobody here wrote.
// Prints "ok <transport> <check>" per check, "FAIL: ..." per failure; exits 1 on any failure.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { connect } from '../../../xenstore/connect.ts';
import { XenstoreError } from '../../../xenstore/errors.ts';
import type { WatchEvent, Xenstore, XenstoreWatch } from '../../../xenstore/xenstore.ts';

/** `c(tool, ...args)` is the trimmed output of one of Xen's C xenstore tools (killed after 30 s: a hang bound). */
function c(tool: string, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(tool, args, { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${tool} ${args.join(' ')}: ${err.killed ? 'hung, killed after 30 s' : stderr.trim() || err.message}`));
      else resolve(stdout.trimEnd());
    });
  });
}

/** `nextEvent(watch)` is the watch's next event; fails when none comes within 30 s (a hang bound, not a timing check). */
async function nextEvent(it: AsyncIterator<WatchEvent>, what: string): Promise<WatchEvent> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no watch event for ${what} within 30 s`)), 30_000);
  });
  try {
    const r = await Promise.race([it.next(), timeout]);
    if (r.done === true) throw new Error(`watch ended while waiting for ${what}`);
    return r.value;
  } finally {
    clearTimeout(timer);
  }
}

/** `bounded(p, what)` is `p`, or a failure when it has not settled within 90 s (a hang bound, not a timing check). */
async function bounded<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within 90 s (hung)`)), 90_000);
  });
  try {
    return await Promise.race([p, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** `rejectsWith(p, code)` checks that `p` rejects with a XenstoreError carrying `code`. */
async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof XenstoreError, `expected a XenstoreError, got ${String(e)}`);
    assert.equal(e.code, code);
    return true;
  });
}

/** `setDiff(want, got)` is what `got` lacks and what it has beyond `want` (short failure messages for long lists). */
function setDiff(want: readonly string[], got: readonly string[]): { missing: string[]; extra: string[] } {
  const w = new Set(want);
  const g = new Set(got);
  return { missing: want.filter((x) => !g.has(x)), extra: got.filter((x) => !w.has(x)) };
}

type Check = (xs: Xenstore, base: string) => Promise<void>;

const CHECKS: ReadonlyArray<readonly [string, Check]> = [
  ['write/read, both ways with the C tools', async (xs, base) => {
    await xs.write(`${base}/ours`, 'written by xenblk');
    assert.equal(await c('xenstore-read', `${base}/ours`), 'written by xenblk');
    await c('xenstore-write', `${base}/theirs`, 'written by xenstore-write');
    assert.equal(await xs.read(`${base}/theirs`), 'written by xenstore-write');
    await xs.write(`${base}/empty`, '');
    assert.equal(await xs.read(`${base}/empty`), '');
    assert.equal(await c('xenstore-read', `${base}/empty`), '');
  }],
  ['missing nodes: ENOENT and tryRead', async (xs, base) => {
    await rejectsWith(xs.read(`${base}/absent`), 'ENOENT');
    assert.equal(await xs.tryRead(`${base}/absent`), undefined);
  }],
  ['invalid path: EINVAL from xenstored', async (xs, base) => {
    await rejectsWith(xs.write(`${base}/has space`, 'x'), 'EINVAL');
  }],
  ['mkdir, directory and rm agree with xenstore-list', async (xs, base) => {
    await xs.mkdir(`${base}/dir/empty-child`);
    await xs.write(`${base}/dir/b`, '2');
    await xs.write(`${base}/dir/a`, '1');
    const ours = (await xs.directory(`${base}/dir`)).sort();
    assert.deepEqual(ours, ['a', 'b', 'empty-child']);
    assert.deepEqual((await c('xenstore-list', `${base}/dir`)).split('\n').sort(), ours);
    await xs.rm(`${base}/dir`);
    assert.equal(await xs.tryRead(`${base}/dir`), undefined);
    await assert.rejects(c('xenstore-read', `${base}/dir/a`));
  }],
  ['directory larger than one reply (DIRECTORY_PART)', async (xs, base) => {
    // 300 names of 24 bytes: 7500 bytes of names, more than XENSTORE_PAYLOAD_MAX (4096).
    const names = Array.from({ length: 300 }, (_, i) => `child-${String(i).padStart(4, '0')}-abcdefghijklm`);
    await Promise.all(names.map((n) => xs.write(`${base}/big/${n}`, n)));
    const theirs = (await c('xenstore-list', `${base}/big`)).split('\n').sort();
    assert.deepEqual(setDiff(names, theirs), { missing: [], extra: [] }, 'xenstore-list after 300 pipelined writes');
    const ours = (await xs.directory(`${base}/big`)).sort();
    assert.deepEqual(setDiff(theirs, ours), { missing: [], extra: [] }, 'directory() against xenstore-list');
    assert.equal(ours.length, 300);
  }],
  ['watch: initial event, then a change made by xenstore-write', async (xs, base) => {
    await xs.write(`${base}/watched/key`, 'before');
    const w: XenstoreWatch = xs.watch(`${base}/watched`, 'xenblk-token');
    const it = w[Symbol.asyncIterator]();
    try {
      const first = await nextEvent(it, 'the initial event');
      assert.deepEqual(first, { path: `${base}/watched`, token: 'xenblk-token' });
      await c('xenstore-write', `${base}/watched/key`, 'after');
      let ev = await nextEvent(it, 'the write by xenstore-write');
      // xenstored may report the watched path itself again first; the change must follow.
      while (ev.path !== `${base}/watched/key`) ev = await nextEvent(it, 'the write by xenstore-write');
      assert.equal(ev.token, 'xenblk-token');
      assert.equal(await xs.read(`${base}/watched/key`), 'after');
    } finally {
      await w.close();
    }
  }],
  ['transaction commits atomically', async (xs, base) => {
    await xs.transaction(async (tx) => {
      await tx.write(`${base}/tx/one`, '1');
      await tx.write(`${base}/tx/two`, '2');
      // Not visible outside the transaction before it ends.
      await assert.rejects(c('xenstore-read', `${base}/tx/one`));
    });
    assert.equal(await c('xenstore-read', `${base}/tx/one`), '1');
    assert.equal(await c('xenstore-read', `${base}/tx/two`), '2');
  }],
  ['transaction conflict: EAGAIN from xenstored, retried', async (xs, base) => {
    await xs.write(`${base}/counter`, 'start');
    let attempts = 0;
    await xs.transaction(async (tx) => {
      attempts++;
      const v = await tx.read(`${base}/counter`);
      // A write from another connection between our read and our commit: xenstored must refuse the commit.
      if (attempts === 1) await c('xenstore-write', `${base}/counter`, 'bumped');
      await tx.write(`${base}/counter`, `${v}+1`);
    });
    assert.equal(attempts, 2);
    assert.equal(await c('xenstore-read', `${base}/counter`), 'bumped+1');
  }],
  ['transaction abort leaves nothing behind', async (xs, base) => {
    await assert.rejects(xs.transaction(async (tx) => {
      await tx.write(`${base}/aborted`, 'x');
      throw new Error('abort on purpose');
    }), /abort on purpose/);
    assert.equal(await xs.tryRead(`${base}/aborted`), undefined);
  }],
  ['permissions round trip, as xenstore-ls -p shows them', async (xs, base) => {
    await xs.write(`${base}/perm`, 'p');
    const perms = [{ domid: 0, perm: 'n' }, { domid: 7, perm: 'r' }, { domid: 9, perm: 'b' }] as const;
    await xs.setPermissions(`${base}/perm`, perms);
    assert.deepEqual(await xs.getPermissions(`${base}/perm`), perms);
    assert.match(await c('xenstore-ls', '-p', base), /^perm = "p"[ .]*\(n0,r7,b9\)$/m);
  }],
  ['domain queries', async (xs) => {
    assert.equal(await xs.getDomainPath(0), '/local/domain/0');
    assert.equal(await xs.getDomainPath(5), '/local/domain/5');
    assert.equal(await xs.read('/local/domain/0/name'), 'Domain-0');
    assert.equal(await xs.isDomainIntroduced(0), true);
  }],
];

async function main(): Promise<number> {
  let failures = 0;
  for (const transport of ['socket', 'xenbus'] as const) {
    const base = `/xenblk-test/${transport}`;
    let xs: Xenstore;
    try {
      xs = await connect({ transport });
    } catch (e) {
      console.log(`FAIL: connect({ transport: '${transport}' }): ${e instanceof Error ? e.message : String(e)}`);
      failures++;
      continue;
    }
    try {
      await bounded(xs.rm(base), `${transport}: rm ${base}`).catch(() => undefined);
      for (const [name, check] of CHECKS) {
        try {
          await bounded(check(xs, base), `${transport}: ${name}`);
          console.log(`ok ${transport}: ${name}`);
        } catch (e) {
          failures++;
          console.log(`FAIL: ${transport}: ${name}: ${e instanceof Error ? e.message : String(e)}`);
        }
      }
      await bounded(xs.rm(base), `${transport}: rm ${base}`);
    } catch (e) {
      failures++;
      console.log(`FAIL: ${transport}: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      await bounded(xs.close(), `${transport}: close()`).catch((e: unknown) => {
        failures++;
        console.log(`FAIL: ${e instanceof Error ? e.message : String(e)}`);
      });
    }
  }
  console.log(`${failures === 0 ? 'all checks passed' : `${failures} check(s) failed`}`);
  return failures === 0 ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    console.log(`FAIL: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    process.exitCode = 1;
  },
);
