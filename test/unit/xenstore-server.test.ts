// The in-memory xenstored as a library, without sockets: requests in, replies and events out.
// Behaviour that Xen's C daemon shares is proven against it by the conformance and
// differential tests; these pin the library surface the simulator uses (connections acting
// as a domid, toolstack-side introduce/release, quotas, robustness to garbage).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { XenstoredCore } from '../../xenstore/server/core.ts';
import { resolveQuotas, DEFAULT_QUOTAS } from '../../xenstore/server/quotas.ts';
import { XsOp, xsOpName, type XsMessage } from '../../protocol/xs-wire.ts';

const enc = new TextEncoder();
const dec = new TextDecoder();

function attach(core: XenstoredCore, domid: number) {
  const got: XsMessage[] = [];
  const drops: string[] = [];
  let req = 1;
  const c = core.connect(domid, { send: (m) => got.push(...m), drop: (r) => drops.push(r) });
  return {
    conn: c,
    got,
    drops,
    /** `call(type, ...args)` is the reply (type name and payload text) to one request. */
    call(type: number, args: string[] | Uint8Array, txId = 0): { type: string; text: string } {
      const id = req++;
      const payload = args instanceof Uint8Array ? args : enc.encode(args.map((a) => `${a}\0`).join(''));
      c.receive({ type, reqId: id, txId, payload });
      const r = got.find((m) => m.reqId === id && m.type !== XsOp.WATCH_EVENT);
      assert.ok(r, `no reply to ${xsOpName(type)}`);
      got.splice(got.indexOf(r), 1);
      return { type: xsOpName(r.type), text: dec.decode(r.payload) };
    },
    events(): string[] {
      const ev = got.filter((m) => m.type === XsOp.WATCH_EVENT).map((m) => dec.decode(m.payload));
      for (let i = got.length - 1; i >= 0; i--) if (got[i]!.type === XsOp.WATCH_EVENT) got.splice(i, 1);
      return ev;
    },
  };
}

test('starts with the tree xenstored creates and dom0 introduced', () => {
  const core = new XenstoredCore();
  const d0 = attach(core, 0);
  assert.deepEqual(d0.call(XsOp.DIRECTORY, ['/']), { type: 'DIRECTORY', text: 'tool\0' });
  assert.deepEqual(d0.call(XsOp.DIRECTORY, ['/tool']), { type: 'DIRECTORY', text: 'xenstored\0' });
  assert.deepEqual(d0.call(XsOp.IS_DOMAIN_INTRODUCED, ['0']), { type: 'IS_DOMAIN_INTRODUCED', text: 'T\0' });
  assert.equal(core.isIntroduced(0), true);
});

test('toolstack-side introduce and release: events, dropped connections, removed nodes', () => {
  const core = new XenstoredCore();
  const d0 = attach(core, 0);
  d0.call(XsOp.WATCH, ['@introduceDomain', 'i']);
  d0.call(XsOp.WATCH, ['@releaseDomain', 'r']);
  assert.deepEqual(d0.events(), ['@introduceDomain\0i\0', '@releaseDomain\0r\0']);
  core.introduceDomain(4);
  core.introduceDomain(4); // already introduced: no second event
  assert.deepEqual(d0.events(), ['@introduceDomain\0i\0']);
  d0.call(XsOp.MKDIR, ['/local/domain/4']);
  d0.call(XsOp.SET_PERMS, ['/local/domain/4', 'n4']);
  const d4 = attach(core, 4);
  assert.deepEqual(d4.call(XsOp.WRITE, enc.encode('data/x\0v')), { type: 'WRITE', text: 'OK\0' });
  assert.deepEqual(d0.call(XsOp.READ, ['/local/domain/4/data/x']), { type: 'READ', text: 'v' });
  d4.call(XsOp.WATCH, ['data', 'mine']);
  core.releaseDomain(4);
  assert.deepEqual(d4.drops, ['domain 4 released']);
  assert.equal(d4.conn.closed, true);
  assert.deepEqual(d0.events(), ['@releaseDomain\0r\0']);
  assert.deepEqual(d0.call(XsOp.READ, ['/local/domain/4']), { type: 'ERROR', text: 'ENOENT\0' });
  assert.equal(core.isIntroduced(4), false);
});

test('permissions: inheritance on implicit creation, ownership by the creating domain', () => {
  const core = new XenstoredCore();
  const d0 = attach(core, 0);
  core.introduceDomain(2);
  d0.call(XsOp.MKDIR, ['/local/domain/2']);
  d0.call(XsOp.SET_PERMS, ['/local/domain/2', 'n2', 'r0', 'r9']);
  const d2 = attach(core, 2);
  d2.call(XsOp.WRITE, enc.encode('a/b/c\0x'));
  for (const p of ['/local/domain/2/a', '/local/domain/2/a/b', '/local/domain/2/a/b/c']) {
    assert.deepEqual(d0.call(XsOp.GET_PERMS, [p]), { type: 'GET_PERMS', text: 'n2\0r0\0r9\0' }, p);
  }
  d0.call(XsOp.WRITE, enc.encode('/local/domain/2/from0/x\0y'));
  assert.deepEqual(d0.call(XsOp.GET_PERMS, ['/local/domain/2/from0']), { type: 'GET_PERMS', text: 'n2\0r0\0r9\0' }, 'dom0 does not take ownership');
  assert.deepEqual(d2.call(XsOp.SET_PERMS, ['a', 'n0']), { type: 'ERROR', text: 'EPERM\0' });
  assert.deepEqual(d2.call(XsOp.READ, ['/tool']), { type: 'ERROR', text: 'EACCES\0' });
});

test('a dead domain in an ACL is kept but ignored; a dead owner is refused', () => {
  const core = new XenstoredCore({ isDomainAlive: (d) => d < 50 });
  const d0 = attach(core, 0);
  d0.call(XsOp.MKDIR, ['/x']);
  assert.deepEqual(d0.call(XsOp.SET_PERMS, ['/x', 'n0', 'r60']), { type: 'SET_PERMS', text: 'OK\0' });
  assert.deepEqual(d0.call(XsOp.GET_PERMS, ['/x']), { type: 'GET_PERMS', text: 'n0\0r60\0' });
  assert.deepEqual(d0.call(XsOp.SET_PERMS, ['/x', 'n60']), { type: 'ERROR', text: 'ENOENT\0' });
});

test('quotas are configurable and validated', () => {
  assert.deepEqual(resolveQuotas({}), DEFAULT_QUOTAS);
  assert.equal(resolveQuotas({ pathMax: 9999 }).pathMax, 2048);
  assert.throws(() => resolveQuotas({ nodesPerDomain: -1 }), RangeError);
  const core = new XenstoredCore({ quotas: { nodesPerDomain: 3 } });
  const d0 = attach(core, 0);
  core.introduceDomain(3);
  d0.call(XsOp.MKDIR, ['/local/domain/3']);
  d0.call(XsOp.SET_PERMS, ['/local/domain/3', 'n3']);
  const d3 = attach(core, 3);
  // /local/domain/3 itself counts for domain 3 once it owns it.
  assert.deepEqual(d3.call(XsOp.WRITE, enc.encode('a\0')), { type: 'WRITE', text: 'OK\0' });
  assert.deepEqual(d3.call(XsOp.WRITE, enc.encode('b\0')), { type: 'WRITE', text: 'OK\0' });
  assert.deepEqual(d3.call(XsOp.WRITE, enc.encode('c\0')), { type: 'ERROR', text: 'ENOSPC\0' });
  // dom0 is never limited.
  for (let i = 0; i < 10; i++) assert.equal(d0.call(XsOp.WRITE, enc.encode(`/many/${i}\0`)).type, 'WRITE');
});

test('closing a connection drops its watches and transactions', () => {
  const core = new XenstoredCore();
  const a = attach(core, 0);
  const b = attach(core, 0);
  a.call(XsOp.WATCH, ['/w', 't']);
  const tx = Number(a.call(XsOp.TRANSACTION_START, ['']).text.replace('\0', ''));
  a.call(XsOp.WRITE, enc.encode('/w/x\0in-tx'), tx);
  a.conn.close();
  b.call(XsOp.WRITE, enc.encode('/w/y\0'));
  assert.deepEqual(a.events(), ['/w\0t\0']); // only the initial event, from before the close
  assert.deepEqual(b.call(XsOp.READ, ['/w/x']), { type: 'ERROR', text: 'ENOENT\0' });
  assert.equal(core.state.db.size, 5, 'no transaction copies left behind');
});

test('any request, however malformed, gets exactly one reply and never breaks the server', () => {
  fc.assert(fc.property(
    fc.array(fc.record({
      type: fc.oneof(fc.integer({ min: 0, max: 30 }), fc.integer({ min: 0, max: 0xffffffff })),
      txId: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 0xffffffff })),
      payload: fc.oneof(
        fc.uint8Array({ maxLength: 64 }),
        fc.array(fc.constantFrom('/a', 'a', '/a/b', '', 'r0', 'n5', 'T', 'F', '5', '@releaseDomain', '0', 'x//y'), { maxLength: 4 })
          .map((xs) => enc.encode(xs.map((x) => `${x}\0`).join(''))),
      ),
      domid: fc.constantFrom(0, 0, 7),
    }), { maxLength: 40 }),
    (reqs) => {
      const core = new XenstoredCore({ onInternalError: (e) => { throw e; } });
      core.introduceDomain(7);
      const conns = [attach(core, 0), attach(core, 7)];
      reqs.forEach((r, i) => {
        const c = conns[r.domid === 0 ? 0 : 1]!;
        if (c.conn.closed) return;
        c.conn.receive({ type: r.type, reqId: 1000 + i, txId: r.txId, payload: r.payload });
        const replies = c.got.filter((m) => m.reqId === 1000 + i && m.type !== XsOp.WATCH_EVENT);
        assert.equal(replies.length, 1, `request ${i} ${xsOpName(r.type)}`);
        assert.ok(replies[0]!.type === r.type || replies[0]!.type === XsOp.ERROR);
      });
    },
  ), { numRuns: 300 });
});

test('a malformed single argument is EINVAL (Xen 4.17 replies with a stale errno, or aborts)', () => {
  const core = new XenstoredCore();
  const d0 = attach(core, 0);
  for (const type of [XsOp.READ, XsOp.DIRECTORY, XsOp.GET_PERMS, XsOp.MKDIR, XsOp.RM]) {
    for (const payload of ['/t/a\0x\0', '/t/a', '']) {
      assert.deepEqual(d0.call(type, enc.encode(payload)), { type: 'ERROR', text: 'EINVAL\0' }, `${xsOpName(type)} ${JSON.stringify(payload)}`);
    }
  }
  assert.deepEqual(d0.call(XsOp.SET_PERMS, ['@other', 'n0']), { type: 'ERROR', text: 'EINVAL\0' });
  core.introduceDomain(2);
  assert.deepEqual(attach(core, 2).call(XsOp.SET_PERMS, ['@releaseDomain', 'n2']), { type: 'ERROR', text: 'EACCES\0' });
});
