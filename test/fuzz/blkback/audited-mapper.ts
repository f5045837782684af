// The backend's GrantMapper, audited: every map and unmap the backend makes goes through here
// on its way to the platform's mapper. A successful map must name the frontend's domain, and
// every ref must be one the frontend granted to the backend (writable if mapped writable) and,
// while a batch is checked strictly, one that a request of that batch named. The latter is what
// catches a double fetch: the fuzzer rewrites requests after the backend copied them, using
// "decoy" refs that are granted but never named by the original requests. Hooks let the fuzzer
// act at the moment the backend maps (the window between copying a request and using it).
//
// Mappings are the platform's own: they alias the frontend's pages, as on Xen, so a backend's
// write into a page it may only read shows in the fuzzer's shadow copies, and an unmapped
// mapping's buffer is detached (a use after unmap throws).
import type { GrantMapper, MappedGrants, UnmapNotify } from '../../../gnttab/gnttab.ts';
import type { GrantCopyBatch } from '../../../gnttab/copy-batch.ts';
import type { GrantPools } from './grant-pools.ts';

/** A GrantMapper that checks every map against the frontend's grants. */
export class AuditedMapper implements GrantMapper {
  /** Oracle violations seen (cleared by the fuzzer after reporting). */
  readonly violations: string[] = [];
  /** The mappings the backend holds now. */
  readonly live = new Set<MappedGrants>();
  /** Refs the current batch named; undefined: do not check (chaos batches, ring set-up). */
  named: Set<number> | undefined;
  /** Called before each map attempt (the fuzzer rewrites consumed requests here). */
  beforeMap: ((refs: readonly number[]) => void) | undefined;
  /** Called after each unmap. */
  afterUnmap: ((refs: readonly number[]) => void) | undefined;
  maps = 0;
  copies = 0;
  failedMaps = 0;
  unmaps = 0;

  constructor(
    private readonly inner: GrantMapper,
    private readonly frontendDomid: number,
    private readonly pools: GrantPools,
  ) {}

  map(domid: number, refs: readonly number[], writable: boolean): MappedGrants {
    this.beforeMap?.(refs);
    if (domid !== this.frontendDomid) {
      this.violations.push(`backend mapped grants of domain ${domid}, not of its frontend ${this.frontendDomid} (refs ${refs.join(',')})`);
    }
    let m: MappedGrants;
    try {
      m = this.inner.map(domid, refs, writable);
    } catch (e) {
      this.failedMaps++;
      throw e;
    }
    this.maps++;
    for (const r of refs) {
      if (!this.pools.grantedToBackend(r, writable)) {
        this.violations.push(`backend mapped ref ${r} ${writable ? 'writable' : 'read-only'}, which the frontend did not grant it that way`);
      } else if (this.named !== undefined && !this.named.has(r)) {
        this.violations.push(`backend mapped ref ${r}, which no request of the batch named (a rewritten request read twice?)`);
      }
    }
    this.live.add(m);
    return m;
  }

  unmap(m: MappedGrants): void {
    if (!this.live.has(m)) {
      this.violations.push(`backend unmapped a mapping it does not hold (refs ${m.refs.join(',')})`);
      this.inner.unmap(m);
      return;
    }
    this.live.delete(m);
    this.unmaps++;
    this.inner.unmap(m);
    this.afterUnmap?.(m.refs);
  }

  /**
   * A grant copy is audited as a map is: once the platform (the hypervisor) carried it out, it
   * must have named the frontend's domain and refs granted to us that way (writable for a copy
   * into them) and, in a strict batch, named by a request of the batch. A refused copy touched
   * nothing, as a refused map maps nothing.
   */
  copy(domid: number, batch: GrantCopyBatch, local: Uint8Array, toForeign: boolean): void {
    const refs: number[] = [];
    for (let i = 0; i < batch.count; i++) refs.push(batch.refs[i]!);
    this.beforeMap?.(refs);
    try {
      this.inner.copy(domid, batch, local, toForeign);
    } catch (e) {
      this.failedMaps++;
      throw e;
    }
    this.copies++;
    if (domid !== this.frontendDomid) {
      this.violations.push(`backend copied grants of domain ${domid}, not of its frontend ${this.frontendDomid} (refs ${refs.join(',')})`);
    }
    for (const r of refs) {
      if (!this.pools.grantedToBackend(r, toForeign)) {
        this.violations.push(`backend copied ${toForeign ? 'into' : 'out of'} ref ${r}, which the frontend did not grant it that way`);
      } else if (this.named !== undefined && !this.named.has(r)) {
        this.violations.push(`backend copied ref ${r}, which no request of the batch named (a rewritten request read twice?)`);
      }
    }
  }

  setUnmapNotify(m: MappedGrants, notify: UnmapNotify): void {
    this.inner.setUnmapNotify(m, notify);
  }

  close(): void {
    this.live.clear();
    this.inner.close();
  }

  /** `mappedPages()` is how many pages the backend holds mapped now. */
  mappedPages(): number {
    let n = 0;
    for (const m of this.live) n += m.refs.length;
    return n;
  }
}
