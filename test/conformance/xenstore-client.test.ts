// Our XenStore client against both servers: our in-memory xenstored and Xen's own C
// xenstored (Debian xen-utils-4.17, run without Xen through our LD_PRELOAD shim; unprivileged
// domains reach it through a real ring page). The same assertions must hold on both, so
// every expected value here is what Xen's daemon does.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { connectClient } from '../../xenstore/connect.ts';
import type { XenstoreClient } from '../../xenstore/client.ts';
import { XenstoreError, XenstoreRecordError } from '../../xenstore/errors.ts';
import { readRecord, xsField } from '../../xenstore/record.ts';
import type { WatchEvent, XenstoreWatch } from '../../xenstore/xenstore.ts';
import { startServer, type ServerUnderTest } from './xenstore-harness.ts';

async function next(w: XenstoreWatch): Promise<WatchEvent> {
  const it = w[Symbol.asyncIterator]();
  const r = await it.next();
  assert.equal(r.done, false, `watch ${w.path} ended`);
  return r.value as WatchEvent;
}

/** Collect the events of `w` until a sync round trip on `c` guarantees everything sent before has arrived. */
async function drain(c: XenstoreClient, w: XenstoreWatch, count: number): Promise<WatchEvent[]> {
  const out: WatchEvent[] = [];
  for (let i = 0; i < count; i++) out.push(await next(w));
  await c.getDomainPath(0);
  return out;
}

async function rejects(p: Promise<unknown>, code: string, op?: string, path?: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof XenstoreError, `expected XenstoreError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (op !== undefined) assert.equal(e.op, op);
    if (path !== undefined) assert.equal(e.path, path);
    return true;
  });
}

for (const kind of ['ours', 'xen'] as const) {
  describe(`xenstore client against ${kind === 'ours' ? 'our xenstored' : "Xen's C xenstored"}`, () => {
    let server: ServerUnderTest;
    let dom0: XenstoreClient;
    let dom5: XenstoreClient;
    const clients: XenstoreClient[] = [];

    async function domain(domid: number): Promise<XenstoreClient> {
      const c = await connectClient({ socketPath: await server.domainSocket(domid) });
      clients.push(c);
      return c;
    }

    before(async () => {
      server = await startServer(kind);
      dom0 = await connectClient({ socketPath: server.socketPath });
      clients.push(dom0);
      // What a toolstack does for a new guest: introduce it, give it a home it owns.
      await dom0.introduceDomain(5, 0n, 7);
      await dom0.mkdir('/local/domain/5');
      await dom0.setPermissions('/local/domain/5', [{ domid: 5, perm: 'n' }]);
      dom5 = await domain(5);
    });

    after(async () => {
      for (const c of clients) await c.close();
      await server.stop();
    });

    it('reads, writes, lists and removes, creating parents', async () => {
      await dom0.write('/test/a/b/c', 'hello');
      assert.equal(await dom0.read('/test/a/b/c'), 'hello');
      assert.equal(await dom0.read('/test/a/b'), '');
      assert.deepEqual(await dom0.directory('/test/a'), ['b']);
      await dom0.write('/test/a/x', 'ünïcødé');
      assert.equal(await dom0.read('/test/a/x'), 'ünïcødé');
      assert.deepEqual(await dom0.directory('/test/a'), ['b', 'x']);
      await dom0.mkdir('/test/a/b');
      assert.equal(await dom0.read('/test/a/b/c'), 'hello', 'mkdir of an existing node changes nothing');
      await dom0.rm('/test/a/b');
      assert.equal(await dom0.tryRead('/test/a/b/c'), undefined);
      await dom0.rm('/test/a/b'); // already gone, parent exists: fine
      await rejects(dom0.rm('/test/nope/deeper'), 'ENOENT', 'RM', '/test/nope/deeper');
      await rejects(dom0.read('/test/a/b'), 'ENOENT', 'READ', '/test/a/b');
      await rejects(dom0.directory('/nonexistent'), 'ENOENT', 'DIRECTORY');
      assert.deepEqual(await dom0.directory('/test/a/x'), []);
    });

    it('rejects malformed paths and oversize payloads', async () => {
      await rejects(dom0.read('/a//b'), 'EINVAL');
      await rejects(dom0.read('/a/'), 'EINVAL');
      await rejects(dom0.read('/a b'), 'EINVAL');
      await rejects(dom0.write(`/${'x'.repeat(2049)}`, ''), 'EINVAL');
      await dom0.write(`/test/${'y'.repeat(2042)}`, 'max length path');
      await rejects(dom0.write('/test/big', 'v'.repeat(4096)), 'E2BIG', 'WRITE', '/test/big');
      await rejects(dom0.read('/bad\0path'), 'EINVAL');
      await rejects(dom0.rm('/'), 'EINVAL');
    });

    it('lists directories too large for one reply (DIRECTORY_PART)', async () => {
      const names = Array.from({ length: 300 }, (_, i) => `child-with-a-long-name-${String(i).padStart(4, '0')}`);
      await dom0.transaction(async (tx) => {
        for (const n of names) await tx.write(`/test/big/${n}`, '1');
      });
      await rejects(dom0.request(1, 0, new TextEncoder().encode('/test/big\0')), 'E2BIG', 'DIRECTORY');
      assert.deepEqual(await dom0.directory('/test/big'), names);
      await dom0.rm('/test/big');
    });

    it('resolves relative paths against the domain home and applies permissions', async () => {
      assert.equal(await dom5.getDomainPath(5), '/local/domain/5');
      await dom5.write('device/vbd/51712/state', '1');
      assert.equal(await dom0.read('/local/domain/5/device/vbd/51712/state'), '1');
      // Nodes a domain creates are its own; the rest of the list is inherited from the parent.
      assert.deepEqual(await dom0.getPermissions('/local/domain/5/device/vbd'), [{ domid: 5, perm: 'n' }]);
      // dom0 creating under the domain's home inherits the home's owner: it does not take it.
      await dom0.write('/local/domain/5/dom0-owned', 'x');
      assert.deepEqual(await dom0.getPermissions('/local/domain/5/dom0-owned'), [{ domid: 5, perm: 'n' }]);
      await dom0.setPermissions('/local/domain/5/dom0-owned', [{ domid: 0, perm: 'n' }]);
      await rejects(dom5.read('dom0-owned'), 'EACCES', 'READ', 'dom0-owned');
      await rejects(dom5.write('/test/outside', 'x'), 'EACCES');
      // A node it cannot see under a parent it cannot read: EACCES, not ENOENT.
      await rejects(dom5.read('/test/does-not-exist'), 'EACCES');
      // ... but under its own home, a missing node is ENOENT.
      await rejects(dom5.read('missing'), 'ENOENT');
      await dom0.setPermissions('/local/domain/5/dom0-owned', [{ domid: 0, perm: 'n' }, { domid: 5, perm: 'r' }]);
      assert.equal(await dom5.read('dom0-owned'), 'x');
      await rejects(dom5.write('dom0-owned', 'y'), 'EACCES');
      await rejects(dom5.setPermissions('device', [{ domid: 0, perm: 'n' }]), 'EPERM');
      await dom5.setPermissions('device', [{ domid: 5, perm: 'r' }]);
      assert.deepEqual(await dom5.getPermissions('device'), [{ domid: 5, perm: 'r' }]);
      // Privileged operations are refused to domains.
      await rejects(dom5.introduceDomain(6, 0n, 1), 'EACCES', 'INTRODUCE');
      await rejects(dom5.isDomainIntroduced(0), 'EACCES');
    });

    it('enforces quotas with the errors xenstored gives', async () => {
      // Node size (2048 bytes with header, permissions and children): ENOSPC.
      await rejects(dom5.write('big', 'x'.repeat(2048)), 'ENOSPC');
      await dom5.write('big', 'x'.repeat(1900));
      // More than 5 permission entries: ENOSPC.
      await rejects(dom5.setPermissions('big', [0, 1, 2, 3, 4, 6].map((d) => ({ domid: d === 0 ? 5 : d, perm: 'r' as const }))), 'ENOSPC');
      // Watches: the 130th (quota 128, checked with ">") is E2BIG.
      const ws: XenstoreWatch[] = [];
      for (let i = 0; i < 129; i++) {
        const w = dom5.watch(`w/${i}`, `q${i}`);
        ws.push(w);
        await (w as XenstoreWatch & { ready: Promise<void> }).ready;
      }
      const over = dom5.watch('w/over', 'qover');
      await rejects(next(over), 'E2BIG', 'WATCH');
      for (const w of ws) await w.close();
      // Transactions: the 12th open one (quota 10, checked with ">") is ENOSPC.
      const ids: number[] = [];
      for (let i = 0; i < 11; i++) ids.push(await dom5.transactionStart());
      await rejects(dom5.transactionStart(), 'ENOSPC', 'TRANSACTION_START');
      for (const id of ids) await dom5.transactionEnd(id, false);
    });

    it('fires watches: initial event, children, removal, relative paths', async () => {
      await dom0.write('/test/w/a', '1');
      const w = dom0.watch('/test/w', 'tok');
      assert.deepEqual(await next(w), { path: '/test/w', token: 'tok' });
      await dom0.write('/test/w/a/b', '2');
      assert.deepEqual(await next(w), { path: '/test/w/a/b', token: 'tok' });
      await dom0.write('/test/other', '2'); // not under the watch
      await dom0.rm('/test/w/a');
      assert.deepEqual(await drain(dom0, w, 1), [{ path: '/test/w/a', token: 'tok' }]);
      // Removing an ancestor fires the watch of a descendant with its own path.
      await dom0.write('/test/w/x/y/z', '3');
      assert.deepEqual(await next(w), { path: '/test/w/x/y/z', token: 'tok' });
      const deep = dom0.watch('/test/w/x/y', 'deep');
      assert.deepEqual(await next(deep), { path: '/test/w/x/y', token: 'deep' });
      await dom0.rm('/test/w');
      assert.deepEqual(await drain(dom0, deep, 1), [{ path: '/test/w/x/y', token: 'deep' }]);
      assert.deepEqual(await next(w), { path: '/test/w', token: 'tok' });
      await deep.close();
      await w.close();
      // A domain's relative watch reports relative paths.
      const rel = dom5.watch('device', 'rel');
      assert.deepEqual(await next(rel), { path: 'device', token: 'rel' });
      await dom0.write('/local/domain/5/device/vbd/51712/state', '4');
      assert.deepEqual(await next(rel), { path: 'device/vbd/51712/state', token: 'rel' });
      await rel.close();
    });

    it('filters events by the watcher’s read permission', async () => {
      await dom0.write('/local/domain/5/private/k', 'v');
      await dom0.setPermissions('/local/domain/5/private', [{ domid: 0, perm: 'n' }]);
      await dom0.setPermissions('/local/domain/5/private/k', [{ domid: 0, perm: 'n' }]);
      await rejects(next(dom5.watch('', 'empty')), 'EINVAL', 'WATCH'); // "" is not a node name
      const w = dom5.watch('/local/domain/5', 'home');
      assert.deepEqual(await next(w), { path: '/local/domain/5', token: 'home' });
      await dom0.write('/local/domain/5/private/k', 'w'); // neither node nor parent readable: no event
      await dom0.write('/local/domain/5/visible', '1');
      assert.deepEqual(await next(w), { path: '/local/domain/5/visible', token: 'home' });
      await w.close();
    });

    it('delivers @introduceDomain and @releaseDomain', async () => {
      const intro = dom0.watch('@introduceDomain', 'i');
      const rel = dom0.watch('@releaseDomain', 'r');
      assert.deepEqual(await next(intro), { path: '@introduceDomain', token: 'i' });
      assert.deepEqual(await next(rel), { path: '@releaseDomain', token: 'r' });
      assert.equal(await dom0.isDomainIntroduced(9), false);
      await dom0.introduceDomain(9, 0n, 3);
      assert.deepEqual(await next(intro), { path: '@introduceDomain', token: 'i' });
      assert.equal(await dom0.isDomainIntroduced(9), true);
      const dom9 = await domain(9);
      await dom0.mkdir('/local/domain/9');
      await dom0.setPermissions('/local/domain/9', [{ domid: 9, perm: 'n' }]);
      await dom9.write('data', 'x');
      await dom0.write('/test/owned-by-9', '');
      await dom0.setPermissions('/test/owned-by-9', [{ domid: 9, perm: 'n' }]);
      await dom0.releaseDomain(9);
      assert.deepEqual(await next(rel), { path: '@releaseDomain', token: 'r' });
      assert.equal(await dom0.isDomainIntroduced(9), false);
      // Release removes every node the domain owned.
      assert.equal(await dom0.tryRead('/local/domain/9'), undefined);
      assert.equal(await dom0.tryRead('/test/owned-by-9'), undefined);
      await rejects(dom0.releaseDomain(9), 'ENOENT', 'RELEASE');
      await intro.close();
      await rel.close();
    });

    it('runs transactions: isolation, conflicts, retries and abort', async () => {
      await dom0.write('/test/tx/counter', '0');
      // A conflicting write between read and commit makes the commit fail with EAGAIN.
      const id = await dom0.transactionStart();
      const tx = dom0.transactionOps(id);
      assert.equal(await tx.read('/test/tx/counter'), '0');
      await tx.write('/test/tx/counter', '1');
      assert.equal(await dom0.read('/test/tx/counter'), '0', 'uncommitted writes are private');
      await dom0.write('/test/tx/counter', '5');
      await rejects(dom0.transactionEnd(id, true), 'EAGAIN', 'TRANSACTION_END');
      assert.equal(await dom0.read('/test/tx/counter'), '5');
      // transaction() retries until it commits.
      let attempts = 0;
      await dom0.transaction(async (t) => {
        attempts++;
        const v = Number(await t.read('/test/tx/counter'));
        if (attempts === 1) await dom0.write('/test/tx/counter', '10'); // conflict on the first try
        await t.write('/test/tx/counter', String(v + 1));
      });
      assert.equal(attempts, 2);
      assert.equal(await dom0.read('/test/tx/counter'), '11');
      // ... and gives up after maxAttempts.
      await rejects(dom0.transaction(async (t) => {
        await t.read('/test/tx/counter');
        await dom0.write('/test/tx/counter', 'x');
        await t.write('/test/tx/other', 'y');
      }, { maxAttempts: 3 }), 'EAGAIN', 'TRANSACTION_END');
      assert.equal(await dom0.tryRead('/test/tx/other'), undefined);
      // A throwing body aborts: nothing it wrote remains.
      await assert.rejects(dom0.transaction(async (t) => {
        await t.write('/test/tx/aborted', '1');
        throw new Error('boom');
      }), /boom/);
      assert.equal(await dom0.tryRead('/test/tx/aborted'), undefined);
      // Watches fire at commit, not before.
      const w = dom0.watch('/test/tx/watched', 'txw');
      await next(w);
      await dom0.transaction(async (t) => {
        await t.write('/test/tx/watched', '1');
      });
      assert.deepEqual(await next(w), { path: '/test/tx/watched', token: 'txw' });
      await w.close();
      await rejects(dom0.transactionEnd(4242, true), 'ENOENT', 'TRANSACTION_END');
    });

    it('reads typed records and names the bad key', async () => {
      await dom0.write('/test/rec/sectors', '2097152');
      await dom0.write('/test/rec/sector-size', '512');
      await dom0.write('/test/rec/feature-flush-cache', '1');
      const schema = z.object({
        sectors: xsField.uint(),
        'sector-size': xsField.uint(),
        'feature-flush-cache': xsField.flag(),
        'feature-discard': xsField.flag().optional(),
      });
      assert.deepEqual(await readRecord(dom0, '/test/rec', schema), { sectors: 2097152, 'sector-size': 512, 'feature-flush-cache': true });
      await dom0.write('/test/rec/sector-size', '512b');
      await assert.rejects(readRecord(dom0, '/test/rec', schema), (e: unknown) => {
        assert.ok(e instanceof XenstoreRecordError);
        assert.equal(e.path, '/test/rec/sector-size');
        assert.equal(e.value, '512b');
        assert.match(e.message, /\/test\/rec\/sector-size.*"512b"/);
        return true;
      });
      await dom0.rm('/test/rec/sectors');
      await assert.rejects(readRecord(dom0, '/test/rec', schema), (e: unknown) => e instanceof XenstoreRecordError && e.path === '/test/rec/sectors' && e.value === undefined && e.code === 'ENOENT');
    });

    it('multiplexes requests with events in flight', async () => {
      const w = dom0.watch('/test/mux', 'mux');
      await next(w);
      const writes = Array.from({ length: 50 }, (_, i) => dom0.write(`/test/mux/${i}`, String(i)));
      const reads = Array.from({ length: 50 }, () => dom0.getDomainPath(0));
      await Promise.all([...writes, ...reads]);
      const seen = new Set<string>();
      for (let i = 0; i < 50; i++) seen.add((await next(w)).path);
      assert.equal(seen.size, 50);
      await w.close();
    });
  });

  describe(`connection loss (${kind})`, () => {
    it('rejects pending requests and ends watches with an error', async () => {
      const server = await startServer(kind);
      const c = await connectClient({ socketPath: server.socketPath });
      try {
        const w = c.watch('/x', 't');
        await next(w);
        await server.stop();
        await assert.rejects(next(w), (e: unknown) => e instanceof XenstoreError && e.code === 'ECONNRESET');
        await rejects(c.read('/x'), 'ECONNRESET', 'READ', '/x');
      } finally {
        await c.close();
        await server.stop().catch(() => {});
      }
    });
  });
}
