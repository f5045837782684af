// Grant tables: the contract both implementations (Linux gntalloc/gntdev, simulator) meet.
// Frontends share pages (GrantSharer); backends map what was shared (GrantMapper).
// Calls are synchronous: on Linux they are ioctl+mmap, on the simulator table updates + mmap,
// and the data path must not pay a promise per page.

import type { GrantCopyBatch } from './copy-batch.ts';

/** Xen's page size on x86 (XEN_PAGE_SIZE). */
export const PAGE_SIZE = 4096;

/** Pages this domain granted to `domid`; `buffer` spans them contiguously, page i at i*4096. */
export interface SharedPages {
  readonly domid: number;
  readonly refs: readonly number[];
  readonly buffer: Buffer;
  readonly writable: boolean;
}

export interface GrantSharer {
  /** `share(domid, count, writable)` grants `count` fresh zeroed pages to `domid`. */
  share(domid: number, count: number, writable: boolean): SharedPages;
  /**
   * `endAccess(pages)` revokes the grants and frees the pages. Throws GnttabError EBUSY (and
   * revokes nothing) while the peer still has any of them mapped, as gnttab_end_foreign_access.
   */
  endAccess(pages: SharedPages): void;
  close(): void;
}

/** Grants of `domid` mapped into this process; `buffer` spans them, page i at i*4096. */
export interface MappedGrants {
  readonly domid: number;
  readonly refs: readonly number[];
  readonly buffer: Buffer;
  readonly writable: boolean;
}

/** What happens when a mapping goes away, even by process death (gntdev SET_UNMAP_NOTIFY). */
export interface UnmapNotify {
  /** Byte offset within the mapping to clear to 0. */
  readonly clearByte?: number;
  /** Local event-channel port to notify. */
  readonly port?: number;
}

export interface GrantMapper {
  /**
   * `map(domid, refs, writable)` maps the grants into one contiguous buffer. Throws GnttabError
   * naming the ref when a grant is not permitted, belongs to another domain, is read-only for a
   * writable map, or is out of range; nothing stays mapped after a failure.
   */
  map(domid: number, refs: readonly number[], writable: boolean): MappedGrants;
  /** `unmap(m)` releases the mapping; `m.buffer` must not be used afterwards. */
  unmap(m: MappedGrants): void;
  setUnmapNotify(m: MappedGrants, notify: UnmapNotify): void;
  /**
   * `copy(domid, batch, local, toForeign)` has the hypervisor copy each piece of `batch` between
   * `domid`'s granted page and `local` (into the grant when `toForeign`, out of it otherwise),
   * nothing mapped (GNTTABOP_copy). Throws GnttabError naming the first ref refused (not
   * granted to us, read-only for a copy into it, out of range); other pieces may have been
   * copied by then.
   */
  copy(domid: number, batch: GrantCopyBatch, local: Uint8Array, toForeign: boolean): void;
  close(): void;
}
