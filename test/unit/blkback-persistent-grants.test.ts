import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMemoryPlatform } from '../support/memory-host.ts';
import { PersistentGrantCache, type PersistentGrant } from '../../lib/blkback/persistent-grants.ts';
import type { GrantMapper, MappedGrants } from '../../gnttab/gnttab.ts';
import { VbdStats, percentile } from '../../lib/blkback/stats.ts';

test('persistent grant cache: runs are mapped, used and evicted as one; LRU eviction skips runs in use; clear unmaps everything', () => {
  const plat = createMemoryPlatform({ ramPages: 64 });
  const pages = Array.from({ length: 7 }, () => plat.sharer(2).share(0, 1, true));
  const mapper = plat.mapper(0);
  const cache = new PersistentGrantCache(mapper, 5);
  const ref = (i: number): number => pages[i]!.refs[0]!;
  const run = (...is: number[]): PersistentGrant[] | undefined => cache.insert(is.map(ref), mapper.map(2, is.map(ref), true));
  // A run of three: one mapping, its pages back to back in one buffer, not in use until used.
  const r012 = run(0, 1, 2)!;
  assert.deepEqual(r012.map((g) => g.offset), [0, 4096, 8192]);
  assert.ok(r012.every((g) => g.run.mapping.buffer === r012[0]!.run.mapping.buffer && g.run === r012[0]!.run));
  assert.equal(r012[0]!.run.mapping.buffer.length, 3 * 4096);
  pages[1]!.buffer[5] = 0xab;
  assert.equal(r012[1]!.run.mapping.buffer[4096 + 5], 0xab, 'page 1 of the run is gref 1');
  assert.equal(cache.size, 3);
  assert.equal(plat.usage(0).mappings, 1);
  const [g3] = run(3)!;
  assert.equal(cache.size, 4);
  // Found again by any of its grants; a second use of one grant counts as a use.
  const a = cache.acquire(ref(1))!;
  assert.equal(a, r012[1]);
  cache.use(a);
  // Full (5 pages): a run of 2 evicts the least recently used idle run, g3's (r012 is in use).
  assert.ok(run(4, 5));
  assert.equal(cache.acquire(ref(3)), undefined, 'run 3 was evicted');
  assert.equal(g3!.run.at, -1);
  assert.equal(cache.evictions, 1);
  assert.equal(cache.size, 5);
  assert.equal(plat.usage(0).mappings, 2);
  // Nothing idle to evict: a new run is not cached, and its mapping stays the caller's.
  cache.use(cache.acquire(ref(4))!);
  const m6 = mapper.map(2, [ref(6)], true);
  assert.equal(cache.insert([ref(6)], m6), undefined);
  mapper.unmap(m6);
  // A grant already cached is not cached twice; an empty run or one past the bound is refused.
  const dup = mapper.map(2, [ref(6), ref(0)], true);
  assert.equal(cache.insert([ref(6), ref(0)], dup), undefined);
  mapper.unmap(dup);
  const m6b = mapper.map(2, [ref(6)], true);
  assert.equal(cache.insert([], m6b), undefined);
  mapper.unmap(m6b);
  // Releasing both uses of grant 1 leaves run 012 idle: now it can be evicted for a new run.
  cache.release(a);
  cache.release(a);
  assert.ok(run(6));
  assert.equal(cache.acquire(ref(0)), undefined, 'run 012 evicted whole');
  assert.equal(cache.acquire(ref(2)), undefined);
  assert.equal(cache.evictions, 4);
  assert.equal(cache.size, 3);
  cache.clear();
  assert.equal(cache.size, 0);
  assert.equal(plat.usage(0).mappings, 0);
  for (const p of pages) plat.sharer(2).endAccess(p);
});

test('persistent grant cache: a forgotten grant is not found; its page stays mapped and counted until its run is idle with nothing to find', () => {
  const unmapped: number[][] = [];
  const mapper: GrantMapper = {
    map: () => { throw new Error('not used'); },
    unmap: (m) => { unmapped.push([...m.refs]); },
    setUnmapNotify: () => undefined,
    copy: () => { throw new Error('not used'); },
    close: () => undefined,
  };
  const pages = (...grefs: number[]): MappedGrants => ({ domid: 2, refs: grefs, buffer: Buffer.alloc(4096 * grefs.length), writable: false });
  const cache = new PersistentGrantCache(mapper, 8);
  const [a, b] = cache.insert([10, 11], pages(10, 11))!;
  cache.use(a!);
  cache.forget(10);
  assert.equal(cache.acquire(10), undefined);
  assert.equal(cache.acquire(11), b, 'the other grant of the run is still found');
  cache.release(b!);
  assert.equal(cache.size, 2);
  cache.forget(11);
  assert.deepEqual(unmapped, [], 'a use of the run is still in flight');
  assert.equal(cache.size, 2);
  // The forgotten gref can be cached again (mapped writable, say) while the old run lingers.
  const [c] = cache.insert([10], pages(10))!;
  assert.equal(cache.acquire(10), c);
  cache.release(c!);
  assert.equal(cache.size, 3);
  cache.release(a!);
  assert.deepEqual(unmapped, [[10, 11]], 'the last use gone, the run is unmapped');
  assert.equal(cache.size, 1);
  assert.equal(cache.acquire(10), c, 'unmapping the old run left the new grant of gref 10 alone');
  cache.release(c!);
  // An idle grant forgotten alone in its run goes at once.
  cache.forget(10);
  assert.deepEqual(unmapped, [[10, 11], [10]]);
  assert.equal(cache.size, 0);
});

test('persistent grant cache: references past the dense index (>= 32768) and a sparse spread are kept, found, evicted and forgotten alike', () => {
  const unmapped: number[] = [];
  const mapper: GrantMapper = {
    map: () => { throw new Error('not used'); },
    unmap: (m) => { unmapped.push(m.refs[0]!); },
    setUnmapNotify: () => undefined,
    copy: () => { throw new Error('not used'); },
    close: () => undefined,
  };
  const page = (gref: number): MappedGrants => ({ domid: 2, refs: [gref], buffer: Buffer.alloc(4096), writable: true });
  const refs = [5, 32767, 32768, 70000, 0xffffffff, 4000];
  const cache = new PersistentGrantCache(mapper, refs.length);
  for (const r of refs) {
    const g = cache.insert([r], page(r));
    assert.ok(g, `gref ${r} cached`);
    assert.equal(cache.insert([r], page(r)), undefined, `gref ${r} is not cached twice`);
  }
  assert.equal(cache.size, refs.length);
  for (const r of refs) {
    const g = cache.acquire(r);
    assert.equal(g?.gref, r, `gref ${r} found`);
    cache.release(g!);
  }
  for (const r of [6, 32766, 32769, 69999, 1 << 20]) assert.equal(cache.acquire(r), undefined, `gref ${r} was never cached`);
  // Full: the least recently used idle grant (5, acquired first above) makes room.
  assert.ok(cache.insert([12345], page(12345)));
  assert.deepEqual(unmapped, [5]);
  assert.equal(cache.acquire(5), undefined);
  // forget unmaps an idle grant on either side of the index at once, one in use when released.
  cache.forget(70000);
  cache.forget(32767);
  const busy = cache.acquire(0xffffffff)!;
  cache.forget(0xffffffff);
  assert.deepEqual(unmapped, [5, 70000, 32767]);
  assert.equal(cache.acquire(70000), undefined);
  assert.equal(cache.acquire(32767), undefined);
  assert.equal(cache.acquire(0xffffffff), undefined);
  cache.release(busy);
  assert.deepEqual(unmapped, [5, 70000, 32767, 0xffffffff]);
  assert.equal(cache.size, 3);
  cache.clear();
  assert.deepEqual([...unmapped].sort((a, b) => a - b), [5, 4000, 12345, 32767, 32768, 70000, 0xffffffff]);
  assert.equal(cache.size, 0);
  assert.equal(cache.acquire(4000), undefined);
});

test('stats: latency histogram buckets are powers of two microseconds; percentiles are bucket bounds', () => {
  const s = new VbdStats();
  for (let i = 0; i < 98; i++) s.recordLatency(0.1); // 100 us -> bucket 6 [64, 128)
  s.recordLatency(5); // 5000 us -> bucket 12 [4096, 8192)
  s.recordLatency(0.0001); // < 1 us -> bucket 0
  const snap = s.snapshot();
  assert.equal(snap.latency_us[6], 98);
  assert.equal(snap.latency_us[12], 1);
  assert.equal(snap.latency_us[0], 1);
  assert.equal(snap.p50_us, 128);
  assert.equal(snap.p99_us, 128);
  assert.equal(percentile(snap.latency_us, 1), 8192);
  assert.equal(percentile([0, 0], 0.5), 0);
});

test('persistent grant cache: the backing registers each writable run while it is mapped, and gives it back before every unmap', () => {
  const plat = createMemoryPlatform({ ramPages: 64 });
  const pages = Array.from({ length: 6 }, () => plat.sharer(2).share(0, 1, true));
  const ref = (i: number): number => pages[i]!.refs[0]!;
  const inner = plat.mapper(0);
  const events: string[] = [];
  const live = new Set<Uint8Array>();
  // The mapper says when a mapping goes; registration must have ended by then.
  const mapper: GrantMapper = {
    ...inner,
    map: (domid, refs, writable) => inner.map(domid, refs, writable),
    unmap: (m: MappedGrants) => {
      assert.ok(!live.has(m.buffer), 'a registered run is never unmapped');
      events.push(`unmap ${m.buffer.length / 4096}`);
      inner.unmap(m);
    },
  };
  const register = (mem: Uint8Array): (() => void) | undefined => {
    live.add(mem);
    events.push(`register ${mem.length / 4096}`);
    return () => {
      live.delete(mem);
      events.push(`unregister ${mem.length / 4096}`);
    };
  };
  const cache = new PersistentGrantCache(mapper, 4, register);
  const run = (writable: boolean, ...is: number[]): PersistentGrant[] | undefined => cache.insert(is.map(ref), mapper.map(2, is.map(ref), writable));
  assert.ok(run(true, 0, 1));
  assert.ok(run(false, 2), 'a read-only run is cached but not offered');
  assert.deepEqual(events, ['register 2']);
  // Eviction (LRU: run 01), forget of a whole run, and clear all end the registration first.
  assert.ok(run(true, 3, 4));
  assert.deepEqual(events.slice(1), ['unregister 2', 'unmap 2', 'register 2']);
  events.length = 0;
  cache.forget(ref(3));
  cache.forget(ref(4));
  assert.deepEqual(events, ['unregister 2', 'unmap 2']);
  events.length = 0;
  assert.ok(run(true, 5));
  cache.clear();
  assert.deepEqual(events, ['register 1', 'unmap 1', 'unregister 1', 'unmap 1']);
  assert.equal(live.size, 0);
  for (const p of pages) plat.sharer(2).endAccess(p);
});
