// The malicious frontend's grant table, laid out once per session: pages it granted to the
// backend (writable and read-only), pages it granted to a third domain, grants it revoked,
// numbers it never granted, and grants a third domain made to the backend whose numbers mean
// nothing in our table. The ledger records what each of our refs is, so the audited mapper can
// check every successful map against it. Data pages are shared one by one so any one of them
// can be used alone; the platform's frames are never reused, so the set is fixed per session.
import type { GrantSharer, SharedPages } from '../../../gnttab/gnttab.ts';
import type { Rng } from '../fuzzer.ts';

/** One granted page and the role the fuzzer gives it. */
export interface Page {
  readonly ref: number;
  /** The page's 4096 bytes in the frontend's memory. */
  readonly buf: Buffer;
  /** Granted read-only. */
  readonly readonly: boolean;
  readonly pool: PoolName;
  /** What the backend may not change: the content the fuzzer last wrote (pages the backend only reads). */
  shadow: Buffer | undefined;
}

export type PoolName = 'rw' | 'src' | 'ro' | 'ind' | 'decoy';

/** What one of our refs is. */
export interface LedgerEntry {
  readonly grantee: number;
  readonly readonly: boolean;
  active: boolean;
}

/** Sizes of the pools; the defaults fit a session of the in-process fuzzer. */
export interface PoolSizes {
  /** Writable pages read requests land in. */
  readonly rw: number;
  /** Writable pages used only as write sources. */
  readonly src: number;
  /** Read-only pages (write sources, and the "read into a read-only grant" attack). */
  readonly ro: number;
  /** Read-only pages for indirect segment descriptors. */
  readonly ind: number;
  /** Writable pages never named by a well-formed request: a backend that maps one read a rewritten request. */
  readonly decoy: number;
}

export const DEFAULT_POOL_SIZES: PoolSizes = { rw: 96, src: 16, ro: 32, ind: 32, decoy: 8 };

/** The frontend's grants for one session. */
export class GrantPools {
  readonly ledger = new Map<number, LedgerEntry>();
  readonly rw: Page[] = [];
  readonly src: Page[] = [];
  readonly ro: Page[] = [];
  readonly ind: Page[] = [];
  readonly decoy: Page[] = [];
  /** Our refs granted to the third domain, not to the backend. */
  readonly toOther: number[] = [];
  /** Our refs whose access we ended. */
  readonly revoked: number[] = [];
  /** Refs the third domain granted to the backend: valid in its table, never in ours. */
  readonly othersRefs: number[] = [];
  private readonly shared: SharedPages[] = [];

  constructor(
    private readonly sharer: GrantSharer,
    readonly backendDomid: number,
    readonly otherDomid: number,
    sizes: PoolSizes = DEFAULT_POOL_SIZES,
  ) {
    const add = (pool: PoolName, n: number, writable: boolean, into: Page[]): void => {
      for (let i = 0; i < n; i++) {
        const s = this.grant(backendDomid, 1, writable);
        into.push({ ref: s.refs[0]!, buf: s.buffer.subarray(0, 4096), readonly: !writable, pool, shadow: undefined });
      }
    };
    add('rw', sizes.rw, true, this.rw);
    add('src', sizes.src, true, this.src);
    add('ro', sizes.ro, false, this.ro);
    add('ind', sizes.ind, false, this.ind);
    add('decoy', sizes.decoy, true, this.decoy);
    for (let i = 0; i < 4; i++) this.toOther.push(this.grant(otherDomid, 1, true).refs[0]!);
    // Shared together, then revoked: four distinct refs (a table that reuses free entries
    // would otherwise hand the same one out four times).
    const toRevoke = sharer.share(backendDomid, 4, true);
    sharer.endAccess(toRevoke);
    for (const r of toRevoke.refs) {
      this.ledger.set(r, { grantee: backendDomid, readonly: false, active: false });
      this.revoked.push(r);
    }
    for (const p of [...this.ro, ...this.ind, ...this.src]) p.shadow = Buffer.from(p.buf);
  }

  /**
   * `grant(domid, count, writable)` shares pages and records them in the ledger. A platform may
   * hand out a revoked ref again (the simulator's grant table reuses free entries, as Xen's
   * does): it is then no longer a revoked one.
   */
  grant(domid: number, count: number, writable: boolean): SharedPages {
    const s = this.sharer.share(domid, count, writable);
    this.shared.push(s);
    for (const r of s.refs) {
      this.ledger.set(r, { grantee: domid, readonly: !writable, active: true });
      const k = this.revoked.indexOf(r);
      if (k >= 0) this.revoked.splice(k, 1);
      const o = this.toOther.indexOf(r);
      if (o >= 0) this.toOther.splice(o, 1);
    }
    return s;
  }

  /** `release(pages)` ends access to pages granted with `grant` (EBUSY while the backend maps them). */
  release(pages: SharedPages): void {
    this.sharer.endAccess(pages);
    const k = this.shared.indexOf(pages);
    if (k >= 0) this.shared.splice(k, 1);
    for (const r of pages.refs) {
      const g = this.ledger.get(r);
      if (g !== undefined) g.active = false;
    }
  }

  /** `maxRef` is the largest ref of ours. */
  get maxRef(): number {
    let m = 0;
    for (const r of this.ledger.keys()) if (r > m) m = r;
    return m;
  }

  /** `grantedToBackend(ref, writable)` is whether the backend may map `ref` of ours that way. */
  grantedToBackend(ref: number, writable: boolean): boolean {
    const g = this.ledger.get(ref);
    return g !== undefined && g.active && g.grantee === this.backendDomid && (!writable || !g.readonly);
  }

  /** `badRef(rng, kind)` is a ref the backend cannot map from us, of the chosen kind. */
  badRef(rng: Rng, kind: BadRefKind): number {
    switch (kind) {
      case 'never': {
        for (;;) {
          const r = rng.chance(0.3) ? rng.int(8) : rng.chance(0.5) ? this.maxRef + 1 + rng.int(1000) : rng.u32();
          if (!this.ledger.get(r)?.active && !this.othersRefs.includes(r)) return r;
        }
      }
      case 'revoked': return this.revoked.length > 0 ? rng.pick(this.revoked) : this.badRef(rng, 'never');
      case 'other-domain': return this.toOther.length > 0 ? rng.pick(this.toOther) : this.badRef(rng, 'never');
      case 'others-ref': return this.othersRefs.length > 0 ? rng.pick(this.othersRefs) : this.badRef(rng, 'never');
    }
  }

  /** `close()` ends access to everything still granted (nothing may be mapped any more). */
  close(): void {
    for (const s of this.shared) {
      try {
        this.sharer.endAccess(s);
      } catch {
        // Still mapped: the caller's leak check reports it.
      }
    }
    this.shared.length = 0;
  }
}

export type BadRefKind = 'never' | 'revoked' | 'other-domain' | 'others-ref';
export const BAD_REF_KINDS: readonly BadRefKind[] = ['never', 'revoked', 'other-domain', 'others-ref'];

/** Per-batch allocation of read-target sectors in the rw pool: no two reads of a batch share a sector of a page. */
export class SliceAllocator {
  private readonly used: Uint8Array;

  constructor(private readonly pages: readonly Page[]) {
    this.used = new Uint8Array(pages.length);
  }

  reset(): void {
    this.used.fill(0);
  }

  /**
   * `take(rng, len, aligned, avoid)` is an exclusive slice of `len` sectors (1..8) on a page not
   * in `avoid`, or undefined when the pool is full. A read never names one page twice: the
   * memory platform maps scattered frames as a private copy written back at unmap, so two
   * copies of one page in a mapping would overwrite each other (memory-host.ts's documented
   * limitation; on Xen both views are the same frame).
   */
  take(rng: Rng, len: number, aligned: boolean, avoid: ReadonlySet<Page>): { page: Page; first: number; last: number } | undefined {
    const n = this.pages.length;
    const start = rng.int(n);
    for (let k = 0; k < n; k++) {
      const i = (start + k) % n;
      const bits = this.used[i]!;
      if (bits === 0xff || avoid.has(this.pages[i]!)) continue;
      const firsts = aligned ? [0] : Array.from({ length: 9 - len }, (_, f) => f);
      const off = rng.int(firsts.length);
      for (let j = 0; j < firsts.length; j++) {
        const first = firsts[(off + j) % firsts.length]!;
        const mask = ((1 << len) - 1) << first;
        if ((bits & mask) === 0) {
          this.used[i] = bits | mask;
          return { page: this.pages[i]!, first, last: first + len - 1 };
        }
      }
    }
    return undefined;
  }
}
