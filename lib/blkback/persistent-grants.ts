// Persistent grants (blkif.h feature-persistent): when the frontend promises to reuse a fixed
// set of granted pages, the backend keeps each one mapped after the request that first used it
// and finds it again by grant reference, saving a map/unmap per segment.
//
// Linux xen-blkback bounds the cache per ring (max_persistent_grants, default 1056) and, when
// full, purges the least recently used idle grants (5% every 100 ms, skipping grants in use).
// Here eviction happens on demand: inserting into a full cache unmaps the least recently used
// grant not in use; if every cached grant is in use the new mapping is not cached and the
// caller unmaps it after the request, as Linux maps a grant non-persistently when the tree is
// full. The ring also evicts when the system refuses a new mapping for want of mappings
// (ring-service.ts mapOne). Recency is a use stamp per grant (one store per use, where
// re-inserting into the Map cost two hash operations per segment); eviction, rare, scans for
// the oldest idle stamp.
//
// Lookup is by grant reference once per segment (256 times for a 1 MiB request). References a
// frontend hands out are small integers (a Linux guest takes them from its grant table, 512
// per frame of v1 entries, up to Xen's default max_grant_frames of 64: below 32768), so those
// are found by indexing an array grown to the largest seen; a Map holds the rest. In a `perf`
// profile of blkback on 1 MiB reads the Map's hash lookup alone was ~4% of the process.
import type { GrantMapper, MappedGrants } from '../../gnttab/gnttab.ts';

/** Linux xen-blkback's default max_persistent_grants per ring. */
export const DEFAULT_MAX_PERSISTENT_GRANTS = 1056;

/** One grant kept mapped: its page is `mapping.buffer` (4096 bytes). */
export interface PersistentGrant {
  readonly gref: number;
  readonly mapping: MappedGrants;
  /** Requests currently using it; it is never evicted while > 0. */
  users: number;
  /** When it was last used (the cache's use counter). */
  used: number;
  /** Where it is in the cache's list of live grants (the cache's own bookkeeping). */
  at: number;
}

/**
 * References below this are indexed directly: grant table v1 entries are 8 bytes, 512 per frame,
 * and Xen's default max_grant_frames is 64 (xen-command-line: gnttab_max_frames), so 32768. The
 * array costs 8 bytes per reference up to the largest one seen (256 KiB at most).
 */
const DENSE_REFS = 32768;

/** The per-ring cache of persistently mapped grants. */
export class PersistentGrantCache {
  /** Grants by reference below DENSE_REFS (holes are undefined); grown to the largest seen. */
  private dense: (PersistentGrant | undefined)[] = [];
  /** Grants by reference at or above DENSE_REFS. */
  private readonly sparse = new Map<number, PersistentGrant>();
  /** Every cached grant, for eviction's scan (which must not walk the dense index's holes). */
  private readonly live: PersistentGrant[] = [];
  /** Grants evicted since the cache was created. */
  evictions = 0;
  private uses = 0;

  constructor(
    private readonly mapper: GrantMapper,
    private readonly max: number = DEFAULT_MAX_PERSISTENT_GRANTS,
  ) {}

  /** `size` is the number of grants mapped persistently now. */
  get size(): number {
    return this.live.length;
  }

  /** `acquire(gref)` is the cached grant for `gref`, marked in use and most recently used, or undefined. */
  acquire(gref: number): PersistentGrant | undefined {
    const g = this.find(gref);
    if (g === undefined) return undefined;
    g.used = ++this.uses;
    g.users++;
    return g;
  }

  /**
   * `insert(gref, mapping)` caches a fresh single-page mapping of `gref`, in use; it is undefined
   * (and `mapping` stays the caller's) when the cache is full of grants in use.
   */
  insert(gref: number, mapping: MappedGrants): PersistentGrant | undefined {
    if (this.find(gref) !== undefined) return undefined;
    if (this.live.length >= this.max && !this.evictIdle()) return undefined;
    const g: PersistentGrant = { gref, mapping, users: 1, used: ++this.uses, at: this.live.length };
    if (gref < DENSE_REFS) {
      if (gref >= this.dense.length) this.grow(gref);
      this.dense[gref] = g;
    } else {
      this.sparse.set(gref, g);
    }
    this.live.push(g);
    return g;
  }

  /** `release(g)` ends one request's use of `g`. */
  release(g: PersistentGrant): void {
    if (g.users > 0) g.users--;
  }

  /** `drop(gref)` unmaps and forgets `gref` if it is cached and idle (a grant that failed to serve). */
  drop(gref: number): void {
    const g = this.find(gref);
    if (g === undefined || g.users > 0) return;
    this.forget(g);
    this.mapper.unmap(g.mapping);
  }

  /** `clear()` unmaps every cached grant (the ring is disconnecting: nothing is in flight). */
  clear(): void {
    for (const g of this.live) {
      try {
        this.mapper.unmap(g.mapping);
      } catch {
        // The mapping is gone with its peer; nothing else to release.
      }
    }
    this.dense = [];
    this.sparse.clear();
    this.live.length = 0;
  }

  /** The cached grant for `gref` (never a read past the dense array's end). */
  private find(gref: number): PersistentGrant | undefined {
    if (gref < DENSE_REFS) return gref < this.dense.length ? this.dense[gref] : undefined;
    return this.sparse.get(gref);
  }

  private forget(g: PersistentGrant): void {
    if (g.gref < DENSE_REFS) this.dense[g.gref] = undefined;
    else this.sparse.delete(g.gref);
    // Swap-remove from the live list: order there means nothing (recency is the use stamp).
    const last = this.live.pop()!;
    if (last !== g) {
      this.live[g.at] = last;
      last.at = g.at;
    }
  }

  /** Makes the dense array long enough for `gref`: the next power of two, so it grows a few times at most. */
  private grow(gref: number): void {
    let n = Math.max(64, this.dense.length);
    while (n <= gref) n *= 2;
    const next = new Array<PersistentGrant | undefined>(Math.min(n, DENSE_REFS)).fill(undefined);
    for (let i = 0; i < this.dense.length; i++) next[i] = this.dense[i];
    this.dense = next;
  }

  /**
   * `evictIdle()` unmaps and forgets the least recently used grant no request is using, and is
   * false (nothing done) when every cached grant is in use.
   */
  evictIdle(): boolean {
    let oldest: PersistentGrant | undefined;
    for (const g of this.live) {
      if (g.users === 0 && (oldest === undefined || g.used < oldest.used)) oldest = g;
    }
    if (oldest === undefined) return false;
    this.forget(oldest);
    this.mapper.unmap(oldest.mapping);
    this.evictions++;
    return true;
  }
}
