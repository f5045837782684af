// I/O buffers: caller memory granted to the backend once, so that reads and writes through
// them skip blkfront's copy.
//
// Without them every request goes through pages blkfront grants itself (the persistent pool
// or pages shared per request) and the data is copied between those pages and the caller's
// buffers: Linux blkfront with feature_persistent does the same. A 1 MiB read then costs
// blkfront a 1 MiB copy, which the simulator's profile showed as ~60% of blkfront's CPU on
// 1 MiB reads (BENCHMARKS.md, session 9). A user-space frontend cannot grant arbitrary memory
// of its own (Linux gntalloc shares pages it allocates), so the caller asks the device for
// memory that is granted from the start and does its I/O in it, as a program using SPDK
// allocates DMA-able buffers or mirage allocates Io_pages.
//
// What the caller gives up: the backend can read and write the buffer for as long as it is
// allocated (a grant is to a domain, not to one request), so a hostile backend could change a
// read's data after it resolved; and a request on the ring when its operation was aborted may
// still land in the buffer. `free` refuses (EBUSY) while a request still uses the buffer.
//
// How much to allocate: with persistent grants the backend keeps every grant it has seen
// mapped, up to a bound per ring (Linux xen-blkback max_persistent_grants, 1056 pages: what
// Linux blkfront's own pool can reach, 32 slots x (32 segments + 1 indirect page)), and past
// it maps and unmaps the least recently used ones again. I/O buffers are such grants, so a
// program that cycles through more than ~4 MiB of them per device makes the backend map per
// request; reusing a few buffers, as the bench's lanes do, keeps every page mapped once.
// On Linux the pages come from gntalloc, whose `limit` module parameter (1024 grants by
// default, for all its users) also bounds blkfront's own rings and pool: past it `alloc` fails
// with ENOMEM and the caller does its I/O in plain memory, copied as before.
import type { GrantSharer, SharedPages } from '../../gnttab/gnttab.ts';
import { PAGE_SIZE } from '../../gnttab/gnttab.ts';
import { BlkfrontError } from './errors.ts';
import type { GrantReaper } from './grant-pool.ts';

/** One allocation: its granted pages and how many requests' segments use them now. */
export interface IoBufferEntry {
  readonly pages: SharedPages;
  /** Segments of requests on a ring that point into these pages. */
  inUse: number;
}

/** The I/O buffers of one device, found again from any view of them. */
export class IoBuffers {
  /**
   * Keyed by the ArrayBuffer of the granted pages, which every view of them shares. On Linux
   * and the simulator each allocation has an ArrayBuffer of its own; a GrantSharer may also
   * hand out ranges of one (the tests' memory platform), so each key holds a list of ranges.
   */
  private readonly entries = new Map<ArrayBufferLike, IoBufferEntry[]>();

  constructor(
    private readonly sharer: GrantSharer,
    private readonly reaper: GrantReaper,
  ) {}

  /** `alloc(domid, bytes)` is a zeroed, page-aligned Buffer of whole pages granted writable to `domid`. */
  alloc(domid: number, bytes: number): Buffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new BlkfrontError('EINVAL', `I/O buffer of ${bytes} bytes: not a positive byte count`, 'bytes', bytes);
    }
    const count = Math.ceil(bytes / PAGE_SIZE);
    let pages: SharedPages;
    try {
      pages = this.sharer.share(domid, count, true);
    } catch (e) {
      throw new BlkfrontError('ENOMEM', `cannot grant ${count} pages to domain ${domid}: ${(e as Error).message}`, 'bytes', bytes, { cause: e });
    }
    const key = pages.buffer.buffer;
    const list = this.entries.get(key);
    const e = { pages, inUse: 0 };
    if (list === undefined) this.entries.set(key, [e]);
    else list.push(e);
    return pages.buffer;
  }

  /** `lookup(view)` is the allocation `view` lies in, if it is one of ours. */
  lookup(view: Uint8Array): IoBufferEntry | undefined {
    if (this.entries.size === 0) return undefined;
    const list = this.entries.get(view.buffer);
    if (list === undefined) return undefined;
    const from = view.byteOffset;
    const to = from + view.byteLength;
    for (let i = 0; i < list.length; i++) {
      const b = list[i]!.pages.buffer;
      if (from >= b.byteOffset && to <= b.byteOffset + b.byteLength) return list[i];
    }
    return undefined;
  }

  /**
   * `free(view)` revokes the grants of the allocation `view` lies in (deferred while the
   * backend still maps them: a persistent-grant backend keeps them until it disconnects) and
   * detaches every view of it. EINVAL if it is not ours, EBUSY while a request uses it.
   */
  free(view: Uint8Array): void {
    const e = this.lookup(view);
    if (e === undefined) throw new BlkfrontError('EINVAL', 'not an I/O buffer of this device (or already freed)', 'buffer', view.byteLength);
    if (e.inUse > 0) throw new BlkfrontError('EBUSY', `I/O buffer still used by ${e.inUse} segments on the rings`, 'buffer', e.inUse);
    const key = e.pages.buffer.buffer;
    const list = this.entries.get(key)!;
    list.splice(list.indexOf(e), 1);
    if (list.length === 0) this.entries.delete(key);
    this.reaper.release(e.pages);
  }

  /** `releaseAll()` frees every allocation, in use or not (the device is closing: nothing is on a ring any more). */
  releaseAll(): void {
    for (const list of this.entries.values()) for (const e of list) this.reaper.release(e.pages);
    this.entries.clear();
  }
}
