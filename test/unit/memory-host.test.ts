// The in-process test platform must enforce the same grant and event rules as Xen, or tests
// built on it prove nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMemoryPlatform } from '../support/memory-host.ts';

test('a granted page is seen by its mapper; grants are checked', () => {
  const p = createMemoryPlatform({ ramPages: 16 });
  const shared = p.sharer(1).share(0, 2, true);
  const back = p.mapper(0);
  const m = back.map(1, shared.refs, true);
  m.buffer.write('hello', 4096);
  assert.equal(shared.buffer.toString('utf8', 4096, 4101), 'hello');
  assert.throws(() => p.sharer(1).endAccess(shared), /still mapped/);
  back.unmap(m);
  p.sharer(1).endAccess(shared);
  assert.equal(p.usage(1).grants, 0);
  const ro = p.sharer(1).share(0, 1, false);
  assert.throws(() => back.map(1, ro.refs, true), /read-only/);
  assert.throws(() => p.mapper(2).map(1, ro.refs, false), /is for domain 0/);
  assert.throws(() => back.map(1, [9999], false), /not granted/);
});

test('non-consecutive grants map as a copy written back at unmap', () => {
  const p = createMemoryPlatform({ ramPages: 16 });
  const a = p.sharer(1).share(0, 1, true);
  const b = p.sharer(1).share(0, 1, true);
  const mapper = p.mapper(0);
  const m = mapper.map(1, [b.refs[0]!, a.refs[0]!], true);
  m.buffer[0] = 7;
  m.buffer[4096] = 9;
  mapper.unmap(m);
  assert.equal(b.buffer[0], 7);
  assert.equal(a.buffer[0], 9);
});

test('events coalesce and are delivered after bind', async () => {
  const p = createMemoryPlatform({ ramPages: 1 });
  const front = p.evtchn(1).allocUnbound(0);
  const back = p.evtchn(0).bindInterdomain(1, front.localPort);
  let calls = 0;
  const got = new Promise<void>((resolve) => front.onEvent(() => { calls++; resolve(); }));
  back.notify();
  back.notify();
  await got;
  await new Promise((r) => setImmediate(r));
  assert.equal(calls, 1);
  assert.throws(() => p.evtchn(2).bindInterdomain(1, front.localPort), /not unbound/);
  back.close();
  front.close();
  assert.equal(p.usage(0).ports + p.usage(1).ports, 0);
});

test('frames freed by endAccess are reused', () => {
  const p = createMemoryPlatform({ ramPages: 4 });
  const s = p.sharer(1);
  for (let i = 0; i < 100; i++) {
    const pages = s.share(0, 3, true);
    s.endAccess(pages);
  }
  const a = s.share(0, 2, true);
  assert.throws(() => s.share(0, 3, true), /no 3 free contiguous pages/);
  s.endAccess(a);
});
