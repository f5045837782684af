// The backend's GrantMapper, audited: every map and unmap the backend makes goes through here
// on its way to the platform's mapper. A successful map must name the frontend's domain, and
// every ref must be one the frontend granted to the backend (writable if mapped writable) and,
// while a batch is checked strictly, one that a request of that batch named. The latter is what
// catches a double fetch: the fuzzer rewrites requests after the backend copied them, using
// "decoy" refs that are granted but never named by the original requests. Hooks let the fuzzer
// act at the moment the backend maps (the window between copying a request and using it).
//
// Pages are mapped one ref at a time on the platform (each such mapping aliases the frontend's
// page, as on Xen). A mapping of several refs is handed to the backend as one contiguous copy
// and written back at unmap byte by byte where the backend changed it: two mappings of one page
// in flight at once (different sectors of it, for two requests) then both land, as they do on
// Xen, where the memory platform's page-granular write-back would let the second undo the
// first. The copy is also an oracle: a read-only mapping whose copy changed was written, and a
// copy written after its unmap (it is poisoned then, and checked at the end of the batch) was
// used after the grant was released.
import type { GrantMapper, MappedGrants, UnmapNotify } from '../../../gnttab/gnttab.ts';
import type { GrantCopyBatch } from '../../../gnttab/copy-batch.ts';
import type { GrantPools } from './grant-pools.ts';

/** What happened to one live mapping. */
interface Live {
  readonly refs: readonly number[];
  readonly writable: boolean;
  /** Several refs: the platform's single-page mappings behind the copy, and the copy as mapped. */
  readonly parts?: readonly MappedGrants[];
  readonly snapshot?: Buffer;
}

/** What an unmapped copy is filled with; any other byte later means a write after unmap. */
const POISON = 0xee;

/** A GrantMapper that checks every map against the frontend's grants. */
export class AuditedMapper implements GrantMapper {
  /** Oracle violations seen (cleared by the fuzzer after reporting). */
  readonly violations: string[] = [];
  readonly live = new Map<MappedGrants, Live>();
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
    let parts: MappedGrants[] | undefined;
    let snapshot: Buffer | undefined;
    if (refs.length === 1) {
      try {
        m = this.inner.map(domid, refs, writable);
      } catch (e) {
        this.failedMaps++;
        throw e;
      }
    } else {
      parts = [];
      try {
        for (const r of refs) parts.push(this.inner.map(domid, [r], writable));
      } catch (e) {
        for (const p of parts) this.inner.unmap(p);
        this.failedMaps++;
        throw e;
      }
      const p0 = parts[0]!.buffer;
      const adjacent = parts.every((p, i) => p.buffer.buffer === p0.buffer && p.buffer.byteOffset === p0.byteOffset + i * 4096);
      if (adjacent) {
        // Consecutive frames (a multi-page ring, pages shared together): one live view, as Xen
        // maps them; the backend and the frontend see each other's writes.
        m = { domid, refs: [...refs], buffer: Buffer.from(p0.buffer, p0.byteOffset, refs.length * 4096), writable };
      } else {
        const buffer = Buffer.allocUnsafe(refs.length * 4096);
        parts.forEach((p, i) => p.buffer.copy(buffer, i * 4096, 0, 4096));
        snapshot = Buffer.from(buffer);
        m = { domid, refs: [...refs], buffer, writable };
      }
    }
    this.maps++;
    for (const r of refs) {
      if (!this.pools.grantedToBackend(r, writable)) {
        this.violations.push(`backend mapped ref ${r} ${writable ? 'writable' : 'read-only'}, which the frontend did not grant it that way`);
      } else if (this.named !== undefined && !this.named.has(r)) {
        this.violations.push(`backend mapped ref ${r}, which no request of the batch named (a rewritten request read twice?)`);
      }
    }
    this.live.set(m, { refs: [...refs], writable, ...(parts !== undefined ? { parts, ...(snapshot !== undefined ? { snapshot } : {}) } : {}) });
    return m;
  }

  unmap(m: MappedGrants): void {
    const l = this.live.get(m);
    if (l === undefined) {
      this.violations.push(`backend unmapped a mapping it does not hold (refs ${m.refs.join(',')})`);
      this.inner.unmap(m);
      return;
    }
    this.live.delete(m);
    this.unmaps++;
    if (l.parts === undefined) {
      this.inner.unmap(m);
    } else if (l.snapshot === undefined) {
      for (const p of l.parts) this.inner.unmap(p);
    } else {
      const snap = l.snapshot!;
      const buf = m.buffer;
      for (const [i, p] of l.parts.entries()) {
        const base = i * 4096;
        if (buf.compare(snap, base, base + 4096, base, base + 4096) !== 0) {
          if (!l.writable) {
            this.violations.push(`backend wrote into its read-only mapping of ref ${l.refs[i]}`);
          } else {
            // Sector by sector: the backend writes whole 512-byte sectors into a read target.
            for (let k = 0; k < 4096; k += 512) {
              if (buf.compare(snap, base + k, base + k + 512, base + k, base + k + 512) !== 0) buf.copy(p.buffer, k, base + k, base + k + 512);
            }
          }
        }
        this.inner.unmap(p);
      }
      buf.fill(POISON);
      this.retired.push({ buf, refs: l.refs });
    }
    this.afterUnmap?.(m.refs);
  }

  private retired: { buf: Buffer; refs: readonly number[] }[] = [];

  private poison = Buffer.alloc(0);

  /** `checkRetired()` reports copies written after their unmap, and forgets them. */
  checkRetired(): void {
    for (const r of this.retired) {
      if (this.poison.length < r.buf.length) this.poison = Buffer.alloc(r.buf.length, POISON);
      if (!r.buf.equals(this.poison.subarray(0, r.buf.length))) {
        let i = 0;
        while (r.buf[i] === POISON) i++;
        this.violations.push(`backend wrote into a mapping of refs ${r.refs.join(',')} after unmapping it (byte ${i})`);
      }
    }
    this.retired = [];
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
    for (const l of this.live.values()) n += l.refs.length;
    return n;
  }
}
