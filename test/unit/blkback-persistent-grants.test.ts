import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMemoryPlatform } from '../support/memory-host.ts';
import { PersistentGrantCache } from '../../lib/blkback/persistent-grants.ts';
import type { GrantMapper, MappedGrants } from '../../gnttab/gnttab.ts';
import { VbdStats, percentile } from '../../lib/blkback/stats.ts';

test('persistent grant cache: LRU eviction skips grants in use, clear unmaps everything', () => {
  const plat = createMemoryPlatform({ ramPages: 64 });
  const pages = Array.from({ length: 5 }, () => plat.sharer(2).share(0, 1, true));
  const mapper = plat.mapper(0);
  const cache = new PersistentGrantCache(mapper, 3);
  const ref = (i: number): number => pages[i]!.refs[0]!;
  const g0 = cache.insert(ref(0), mapper.map(2, [ref(0)], true))!;
  const g1 = cache.insert(ref(1), mapper.map(2, [ref(1)], true))!;
  cache.insert(ref(2), mapper.map(2, [ref(2)], true));
  cache.release(g1);
  cache.release(cache.acquire(ref(2))!); // ref(2) used: g1 is now least recently used among idle ones
  cache.release(cache.acquire(ref(2))!);
  // g0 is still in use: inserting evicts the LRU idle grant, ref(1).
  const m3 = mapper.map(2, [ref(3)], true);
  assert.ok(cache.insert(ref(3), m3));
  assert.equal(cache.acquire(ref(1)), undefined, 'ref(1) was evicted');
  assert.equal(cache.acquire(ref(0)), g0, 'the grant in use survived');
  assert.equal(cache.evictions, 1);
  assert.equal(plat.usage(0).mappings, 3);
  // Everything in use: a new grant is not cached, and stays the caller's.
  cache.acquire(ref(3));
  cache.acquire(ref(2));
  const m4 = mapper.map(2, [ref(4)], true);
  assert.equal(cache.insert(ref(4), m4), undefined);
  mapper.unmap(m4);
  cache.clear();
  assert.equal(cache.size, 0);
  assert.equal(plat.usage(0).mappings, 0);
  for (const p of pages) plat.sharer(2).endAccess(p);
});

test('persistent grant cache: references past the dense index (>= 32768) and a sparse spread are kept, found, evicted and dropped alike', () => {
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
    const g = cache.insert(r, page(r));
    assert.ok(g, `gref ${r} cached`);
    assert.equal(cache.insert(r, page(r)), undefined, `gref ${r} is not cached twice`);
    cache.release(g);
  }
  assert.equal(cache.size, refs.length);
  for (const r of refs) {
    const g = cache.acquire(r);
    assert.equal(g?.gref, r, `gref ${r} found`);
    cache.release(g!);
  }
  for (const r of [6, 32766, 32769, 69999, 1 << 20]) assert.equal(cache.acquire(r), undefined, `gref ${r} was never cached`);
  // Full: the least recently used idle grant (5, acquired first above) makes room.
  assert.ok(cache.insert(12345, page(12345)));
  assert.deepEqual(unmapped, [5]);
  assert.equal(cache.acquire(5), undefined);
  // drop forgets an idle grant on either side of the index, and leaves one in use alone.
  cache.drop(70000);
  cache.drop(32767);
  const busy = cache.acquire(0xffffffff)!;
  cache.drop(0xffffffff);
  assert.deepEqual(unmapped, [5, 70000, 32767]);
  assert.equal(cache.acquire(70000), undefined);
  assert.equal(cache.acquire(32767), undefined);
  cache.release(busy);
  assert.equal(cache.size, 4);
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
