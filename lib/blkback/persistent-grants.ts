// Persistent grants (blkif.h feature-persistent): when the frontend promises to reuse a fixed
// set of granted pages, the backend keeps each one mapped after the request that first used it
// and finds it again by grant reference, saving a map/unmap per segment.
//
// Linux xen-blkback bounds the cache per ring (max_persistent_grants, default 1056) and, when
// full, purges the least recently used idle grants (5% every 100 ms, skipping grants in use).
// Here eviction happens on demand: inserting into a full cache unmaps the least recently used
// mapping not in use; if every one is in use the new mapping is not cached and the caller
// unmaps it after the request, as Linux maps a grant non-persistently when the tree is full.
// The ring also evicts when the system refuses a new mapping for want of mappings
// (ring-service.ts mapRun).
//
// Runs: the grants a request brings that are not cached yet are mapped together, by one map
// call, into one contiguous buffer, and stay there: a run is cached, used, evicted and
// unmapped as one. A frontend that reuses its buffers in the same order (our blkfront's I/O
// buffers, and its grant pool, which takes pages back in order) sends the same grants in the
// same order again, so a 1 MiB request's 256 pages are found back to back in one mapping and
// reach the disk as one I/O vector entry instead of 256. Measured on the simulator (bench,
// 1 MiB sequential reads and writes): blkback's CPU per operation fell from ~115-160 us to
// ~60-75 us, most of the difference the kernel pinning 256 separately mapped pages per
// io_submit (gup_fast_fallback, bio_iov_iter_get_pages in `perf`). Linux blkfront puts a
// request's grants back at the head of its free list in segment order (blkfront.c
// blkif_completion, list_add), so it hands a set out reversed every other time: its requests
// are served as before, one entry per page where the order is reversed. The bound counts
// pages mapped, so a run's pages count from its mapping to its unmapping.
//
// Recency is a use stamp per run (one store per use); eviction, rare, scans for the oldest idle
// stamp. Lookup is by grant reference once per segment (256 times for a 1 MiB request).
// References a frontend hands out are small integers (a Linux guest takes them from its grant
// table, 512 per frame of v1 entries, up to Xen's default max_grant_frames of 64: below 32768),
// so those are found by indexing an array grown to the largest seen; a Map holds the rest. In a
// `perf` profile of blkback on 1 MiB reads the Map's hash lookup alone was ~4% of the process.
import type { GrantMapper, MappedGrants } from '../../gnttab/gnttab.ts';

/** Linux xen-blkback's default max_persistent_grants per ring. */
export const DEFAULT_MAX_PERSISTENT_GRANTS = 1056;

const PAGE_SIZE = 4096;

/** Grants mapped by one map call: cached, used, evicted and unmapped together. */
export interface PersistentRun {
  readonly mapping: MappedGrants;
  readonly grants: readonly PersistentGrant[];
  /** Grants of the run that can still be found (a forgotten one keeps its page until the run goes). */
  findable: number;
  /** Uses by requests in flight (one per segment); the run is never unmapped while > 0. */
  users: number;
  /** When it was last used (the cache's use counter). */
  used: number;
  /** Where it is in the cache's list of runs (the cache's own bookkeeping), or -1 once unmapped. */
  at: number;
  /** Ends the backing's registration of the run's memory (BlockBackend.registerMemory), if it took it. */
  unregister: (() => void) | undefined;
}

/**
 * One grant kept mapped: its page is bytes [offset, offset + 4096) of its run's buffer
 * (`run.mapping.buffer`: pages adjacent in the run are adjacent there, one I/O vector entry).
 */
export interface PersistentGrant {
  readonly gref: number;
  readonly run: PersistentRun;
  readonly offset: number;
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
  /** Every mapped run, for eviction's scan. */
  private readonly runs: PersistentRun[] = [];
  private pages = 0;
  /** Grants evicted since the cache was created. */
  evictions = 0;
  private uses = 0;

  constructor(
    private readonly mapper: GrantMapper,
    private readonly max: number = DEFAULT_MAX_PERSISTENT_GRANTS,
    /**
     * The backing's registration of memory it will see again (BlockBackend.registerMemory): each
     * writable run is offered for as long as it stays mapped, and unregistered before its unmap,
     * so the backing never keeps a page the guest no longer grants.
     */
    private readonly register?: (mem: Uint8Array) => (() => void) | undefined,
  ) {}

  /** `size` is the number of pages the cache holds mapped now (the bound `max` applies to it). */
  get size(): number {
    return this.pages;
  }

  /** `acquire(gref)` is the cached grant for `gref`, marked in use and most recently used, or undefined. */
  acquire(gref: number): PersistentGrant | undefined {
    const g = this.find(gref);
    if (g !== undefined) this.use(g);
    return g;
  }

  /** `use(g)` marks one more use of a grant the caller holds (a second segment on the same page). */
  use(g: PersistentGrant): void {
    const r = g.run;
    r.used = ++this.uses;
    r.users++;
  }

  /**
   * `insert(grefs, mapping)` caches a fresh mapping of `grefs` (distinct, none cached; page i of
   * `mapping` is grefs[i]) as one run, making room by evicting idle runs. Its grants are
   * returned not in use (the caller `use`s each). Undefined (and `mapping` stays the caller's)
   * when a gref is already cached or the cache cannot make room: every other run is in use.
   */
  insert(grefs: readonly number[], mapping: MappedGrants): PersistentGrant[] | undefined {
    const n = grefs.length;
    if (n === 0 || n > this.max) return undefined;
    for (let i = 0; i < n; i++) if (this.find(grefs[i]!) !== undefined) return undefined;
    while (this.pages + n > this.max) if (!this.evictIdle()) return undefined;
    const grants: PersistentGrant[] = new Array<PersistentGrant>(n);
    // A read-only run is not offered: registration pins for writing.
    const unregister = mapping.writable && this.register !== undefined ? this.register(mapping.buffer) : undefined;
    const run: PersistentRun = { mapping, grants, findable: n, users: 0, used: ++this.uses, at: this.runs.length, unregister };
    for (let i = 0; i < n; i++) {
      const gref = grefs[i]!;
      const g: PersistentGrant = { gref, run, offset: i * PAGE_SIZE };
      grants[i] = g;
      if (gref < DENSE_REFS) {
        if (gref >= this.dense.length) this.grow(gref);
        this.dense[gref] = g;
      } else {
        this.sparse.set(gref, g);
      }
    }
    this.runs.push(run);
    this.pages += n;
    return grants;
  }

  /** `release(g)` ends one use of `g`; a run none of whose grants can be found any more is unmapped when idle. */
  release(g: PersistentGrant): void {
    const r = g.run;
    if (r.users > 0) r.users--;
    if (r.users === 0 && r.findable === 0) this.unmapRun(r);
  }

  /**
   * `forget(gref)` stops finding `gref` (its mapping no longer serves: read-only where a read needs
   * to write). Its page stays mapped, and counted, until its run is idle with nothing to find, or
   * is evicted.
   */
  forget(gref: number): void {
    const g = this.find(gref);
    if (g === undefined) return;
    this.unindex(g);
    const r = g.run;
    if (--r.findable === 0 && r.users === 0) this.unmapRun(r);
  }

  /** `clear()` unmaps every run (the ring is disconnecting: nothing is in flight). */
  clear(): void {
    for (const r of this.runs) {
      r.at = -1;
      this.unregisterRun(r);
      try {
        this.mapper.unmap(r.mapping);
      } catch {
        // The mapping is gone with its peer; nothing else to release.
      }
    }
    this.dense = [];
    this.sparse.clear();
    this.runs.length = 0;
    this.pages = 0;
  }

  /**
   * `evictIdle()` unmaps and forgets the least recently used run no request is using, and is
   * false (nothing done) when every run is in use.
   */
  evictIdle(): boolean {
    let oldest: PersistentRun | undefined;
    for (const r of this.runs) {
      if (r.users === 0 && (oldest === undefined || r.used < oldest.used)) oldest = r;
    }
    if (oldest === undefined) return false;
    this.evictions += oldest.findable;
    this.unmapRun(oldest);
    return true;
  }

  /** The cached grant for `gref` (never a read past the dense array's end). */
  private find(gref: number): PersistentGrant | undefined {
    if (gref < DENSE_REFS) return gref < this.dense.length ? this.dense[gref] : undefined;
    return this.sparse.get(gref);
  }

  private unindex(g: PersistentGrant): void {
    if (g.gref < DENSE_REFS) {
      if (this.dense[g.gref] === g) this.dense[g.gref] = undefined;
    } else if (this.sparse.get(g.gref) === g) {
      this.sparse.delete(g.gref);
    }
  }

  /** Forgets the run's findable grants, removes it from the list and unmaps it. */
  private unmapRun(r: PersistentRun): void {
    if (r.at < 0) return;
    for (const g of r.grants) this.unindex(g);
    r.findable = 0;
    // Swap-remove from the list: order there means nothing (recency is the use stamp).
    const last = this.runs.pop()!;
    if (last !== r) {
      this.runs[r.at] = last;
      last.at = r.at;
    }
    r.at = -1;
    this.pages -= r.grants.length;
    this.unregisterRun(r);
    try {
      this.mapper.unmap(r.mapping);
    } catch {
      // The mapping is gone with its peer; nothing else to release.
    }
  }

  /** Ends the backing's registration of a run about to be unmapped (a failure there must not keep it mapped). */
  private unregisterRun(r: PersistentRun): void {
    const u = r.unregister;
    if (u === undefined) return;
    r.unregister = undefined;
    try {
      u();
    } catch {
      // The backing is closed or gone: its registrations went with it.
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
}
