// The pages blkfront grants to the backend for data and indirect descriptors.
//
// With persistent grants (Linux blkfront feature_persistent: "granted once, data copied in and
// out") pages come from a PersistentGrantPool: shared with the backend the first time they are
// needed, reused for every later request, revoked only when the ring is torn down. Without
// them each request shares fresh pages and revokes them when its response arrives, so the
// backend holds no access to frontend memory between requests (Linux blkif_completion's
// gnttab_end_foreign_access). Either way blkfront copies the caller's data in and out: our
// GrantSharer grants pages it allocates, not arbitrary caller memory.
//
// Revoking can fail with EBUSY while the backend still has a page mapped (after Closing it
// unmaps only when it disconnects). GrantReaper keeps such pages and retries, as Linux's
// gnttab_end_foreign_access defers freeing a page still in use.
import type { GrantSharer, SharedPages } from '../../gnttab/gnttab.ts';
import { PAGE_SIZE } from '../../gnttab/gnttab.ts';

/** Pages shared per call when the persistent pool grows. */
export const POOL_CHUNK_PAGES = 32;
const CHUNK_SHIFT = 5;
const CHUNK_MASK = POOL_CHUNK_PAGES - 1;

/** `isBusy(e)` is whether `e` is the EBUSY of endAccess on a page the peer still maps. */
export function isBusy(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === 'EBUSY';
}

/** Pages whose revocation must wait for the backend to unmap them. */
export class GrantReaper {
  private pending: SharedPages[] = [];

  constructor(private readonly sharer: GrantSharer) {}

  /** `release(pages)` revokes `pages` now, or keeps them for `retry()` while the peer maps them. */
  release(pages: SharedPages): void {
    try {
      this.sharer.endAccess(pages);
    } catch (e) {
      if (!isBusy(e)) throw e;
      this.pending.push(pages);
    }
  }

  /** `retry()` revokes what it can of the kept pages and is how many remain. */
  retry(): number {
    if (this.pending.length === 0) return 0;
    const still: SharedPages[] = [];
    for (const p of this.pending) {
      try {
        this.sharer.endAccess(p);
      } catch (e) {
        if (!isBusy(e)) throw e;
        still.push(p);
      }
    }
    this.pending = still;
    return still.length;
  }

  /** `size` is how many page sets still wait for the backend to unmap them. */
  get size(): number {
    return this.pending.length;
  }

  /** `drain(timeoutMs)` retries until every kept page is revoked or `timeoutMs` passes; is whether all were. */
  async drain(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    let delay = 2;
    while (this.retry() > 0) {
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 50);
    }
    return true;
  }
}

/**
 * Persistently granted pages, handed out by handle. A handle names page `h & 31` of chunk
 * `h >> 5`; chunks are shared POOL_CHUNK_PAGES at a time, on demand, up to `maxPages`.
 */
export class PersistentGrantPool {
  private readonly chunks: SharedPages[] = [];
  /** views[h] is exactly page h (made once per page, so copies to and from a page allocate nothing). */
  private readonly views: Buffer[] = [];
  private readonly free: Uint32Array;
  private freeCount = 0;
  private readonly capacity: number;

  constructor(
    private readonly sharer: GrantSharer,
    private readonly domid: number,
    maxPages: number,
  ) {
    this.capacity = Math.ceil(maxPages / POOL_CHUNK_PAGES) * POOL_CHUNK_PAGES;
    this.free = new Uint32Array(this.capacity);
  }

  /** `granted` is how many pages the pool has shared so far. */
  get granted(): number {
    return this.chunks.length * POOL_CHUNK_PAGES;
  }

  /** `available` is how many pages are free now (without growing). */
  get available(): number {
    return this.freeCount;
  }

  /** `canEverTake(n)` is whether a request for `n` pages fits the pool at all. */
  canEverTake(n: number): boolean {
    return n <= this.capacity;
  }

  /**
   * `take(n, out, at)` writes `n` page handles into `out` from index `at` and is true, growing
   * the pool when needed; false (taking nothing) when the pool is at its limit and too few
   * pages are free: the caller waits for a completion to return some.
   */
  take(n: number, out: Uint32Array, at: number): boolean {
    if (this.freeCount < n && !this.grow(n - this.freeCount)) return false;
    for (let i = 0; i < n; i++) out[at + i] = this.free[--this.freeCount]!;
    return true;
  }

  /**
   * `give(handles, at, n)` returns `n` handles from `handles[at]` to the pool. They go back in
   * reverse so that a later take() gets them in the same order: pages adjacent in memory stay
   * adjacent in a request and are copied in one piece.
   */
  give(handles: Uint32Array, at: number, n: number): void {
    for (let i = n - 1; i >= 0; i--) this.free[this.freeCount++] = handles[at + i]!;
  }

  /** `ref(h)` is the grant reference of page `h`. */
  ref(h: number): number {
    return this.chunks[h >>> CHUNK_SHIFT]!.refs[h & CHUNK_MASK]!;
  }

  /** `buffer(h)` is the memory holding page `h` (at `offset(h)`). */
  buffer(h: number): Buffer {
    return this.chunks[h >>> CHUNK_SHIFT]!.buffer;
  }

  /** `offset(h)` is the byte offset of page `h` in `buffer(h)`. */
  offset(h: number): number {
    return (h & CHUNK_MASK) * PAGE_SIZE;
  }

  /** `page(h)` is page `h` alone (4096 bytes, `buffer(h)` at `offset(h)`). */
  page(h: number): Buffer {
    return this.views[h]!;
  }

  private grow(need: number): boolean {
    const room = this.capacity - this.granted;
    if (room < need) return false;
    const chunks = Math.ceil(need / POOL_CHUNK_PAGES);
    for (let c = 0; c < chunks; c++) {
      const pages = this.sharer.share(this.domid, POOL_CHUNK_PAGES, true);
      const base = this.chunks.length << CHUNK_SHIFT;
      this.chunks.push(pages);
      for (let i = 0; i < POOL_CHUNK_PAGES; i++) this.views.push(pages.buffer.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
      // Lowest handles on top of the stack so pages are reused in a stable order.
      for (let i = POOL_CHUNK_PAGES - 1; i >= 0; i--) this.free[this.freeCount++] = base + i;
    }
    return true;
  }

  /** `release(reaper)` revokes every page (deferring those still mapped); the pool is empty afterwards. */
  release(reaper: GrantReaper): void {
    for (const c of this.chunks) reaper.release(c);
    this.chunks.length = 0;
    this.views.length = 0;
    this.freeCount = 0;
  }
}
