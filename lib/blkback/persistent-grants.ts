// Persistent grants (blkif.h feature-persistent): when the frontend promises to reuse a fixed
// set of granted pages, the backend keeps each one mapped after the request that first used it
// and finds it again by grant reference, saving a map/unmap per segment.
//
// Linux xen-blkback bounds the cache per ring (max_persistent_grants, default 1056) and, when
// full, purges the least recently used idle grants (5% every 100 ms, skipping grants in use).
// Here eviction happens on demand: inserting into a full cache unmaps the least recently used
// grant not in use; if every cached grant is in use the new mapping is not cached and the
// caller unmaps it after the request, as Linux maps a grant non-persistently when the tree is
// full. Recency is a use stamp per grant (one store per use, where re-inserting into the Map
// cost two hash operations per segment); eviction, rare, scans for the oldest idle stamp.
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
}

/** The per-ring cache of persistently mapped grants. */
export class PersistentGrantCache {
  private readonly grants = new Map<number, PersistentGrant>();
  /** Grants evicted since the cache was created. */
  evictions = 0;
  private uses = 0;

  constructor(
    private readonly mapper: GrantMapper,
    private readonly max: number = DEFAULT_MAX_PERSISTENT_GRANTS,
  ) {}

  /** `size` is the number of grants mapped persistently now. */
  get size(): number {
    return this.grants.size;
  }

  /** `acquire(gref)` is the cached grant for `gref`, marked in use and most recently used, or undefined. */
  acquire(gref: number): PersistentGrant | undefined {
    const g = this.grants.get(gref);
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
    if (this.grants.has(gref)) return undefined;
    if (this.grants.size >= this.max && !this.evictOne()) return undefined;
    const g: PersistentGrant = { gref, mapping, users: 1, used: ++this.uses };
    this.grants.set(gref, g);
    return g;
  }

  /** `release(g)` ends one request's use of `g`. */
  release(g: PersistentGrant): void {
    if (g.users > 0) g.users--;
  }

  /** `drop(gref)` unmaps and forgets `gref` if it is cached and idle (a grant that failed to serve). */
  drop(gref: number): void {
    const g = this.grants.get(gref);
    if (g === undefined || g.users > 0) return;
    this.grants.delete(gref);
    this.mapper.unmap(g.mapping);
  }

  /** `clear()` unmaps every cached grant (the ring is disconnecting: nothing is in flight). */
  clear(): void {
    for (const g of this.grants.values()) {
      try {
        this.mapper.unmap(g.mapping);
      } catch {
        // The mapping is gone with its peer; nothing else to release.
      }
    }
    this.grants.clear();
  }

  private evictOne(): boolean {
    let oldest: PersistentGrant | undefined;
    for (const g of this.grants.values()) {
      if (g.users === 0 && (oldest === undefined || g.used < oldest.used)) oldest = g;
    }
    if (oldest === undefined) return false;
    this.grants.delete(oldest.gref);
    this.mapper.unmap(oldest.mapping);
    this.evictions++;
    return true;
  }
}
