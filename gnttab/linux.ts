// Grant tables through Linux's Xen devices: /dev/xen/gntalloc shares pages of this domain,
// /dev/xen/gntdev maps other domains' grants (xen/sys/gntalloc.h, gntdev.h). Both work by an
// ioctl that returns an mmap offset ("index"), then mmap(fd, index) of the pages.
//
// Differences from the simulator a caller should know:
//  - gntalloc cannot refuse to end access: DEALLOC_GREF always succeeds, and the kernel keeps
//    a page still mapped by the grantee (retrying gnttab_end_foreign_access) until it is
//    unmapped. So `endAccess` never throws EBUSY here; the page is simply not reused early.
//  - gntdev validates grants when pages are mmap'ed, and does not say which ref was bad: a
//    failed map names the first ref and the errno.
// Stale views are detached on unmap, as everywhere (native/memory.ts).
import type { GrantMapper, GrantSharer, MappedGrants, SharedPages, UnmapNotify } from './gnttab.ts';
import { PAGE_SIZE } from './gnttab.ts';
import { GnttabError, type GnttabOp } from './error.ts';
import { isDomid } from './grant-entry.ts';
import {
  GNTALLOC_FLAG_WRITABLE, GNTDEV_SIZES, GNTST_NAMES, IOCTL_GNTALLOC_ALLOC_GREF, IOCTL_GNTALLOC_DEALLOC_GREF,
  IOCTL_GNTDEV_GRANT_COPY, IOCTL_GNTDEV_MAP_GRANT_REF, IOCTL_GNTDEV_SET_UNMAP_NOTIFY, IOCTL_GNTDEV_UNMAP_GRANT_REF,
  decodeGrefIds, decodeIndex, encodeAllocGref, encodeDeallocGref, encodeGrantCopy, encodeGrantCopySegment,
  encodeMapGrantRef, encodeUnmapGrantRef, encodeUnmapNotify, grantCopyStatus, gntstErrno,
} from './linux-ioctl.ts';
import type { GrantCopyBatch } from './copy-batch.ts';
import { checkCopy } from './copy-batch.ts';
import { bytesAddress } from '../native/address.ts';
import { NativeError, O, libc, fail } from '../native/libc.ts';
import { ioctl } from '../native/ioctl.ts';
import { Mapping } from '../native/memory.ts';

/** Most pages one call may cover (gntdev's default limit is far above typical use). */
const MAX_BATCH = 4096;
const UNMAP_NOTIFY_CLEAR_BYTE = 1;
const UNMAP_NOTIFY_SEND_EVENT = 2;

function openDevice(path: string, op: GnttabOp): number {
  const fd = libc.open(path, O.RDWR | O.CLOEXEC, 0);
  if (fd < 0) {
    const e = fail('open', path);
    throw new GnttabError(e.code === 'ENOENT' ? 'ENODEV' : e.code, op, 0, undefined, `${path}: ${e.message}`);
  }
  return fd;
}

function asGnttab(e: unknown, op: GnttabOp, domid: number, ref?: number): GnttabError {
  if (e instanceof GnttabError) return e;
  if (e instanceof NativeError) return new GnttabError(e.code, op, domid, ref, e.message);
  return new GnttabError('EIO', op, domid, ref, String(e));
}

function checkBatch(op: GnttabOp, domid: number, count: number): void {
  if (!isDomid(domid)) throw new GnttabError('EINVAL', op, Number(domid), undefined, 'not a domid');
  if (!Number.isInteger(count) || count < 1 || count > MAX_BATCH) throw new GnttabError('EINVAL', op, domid, undefined, `page count ${count} outside 1..${MAX_BATCH}`);
}

class LinuxSharedPages implements SharedPages {
  constructor(
    readonly domid: number,
    readonly refs: readonly number[],
    readonly buffer: Buffer,
    readonly writable: boolean,
    readonly index: number,
    readonly mapping: Mapping,
    readonly owner: LinuxGrantSharer,
  ) {}
}

/** Sharing through /dev/xen/gntalloc (a guest's frontend). */
export class LinuxGrantSharer implements GrantSharer {
  private fd = -1;
  private readonly live = new Set<LinuxSharedPages>();

  /** `new LinuxGrantSharer(device)` opens `device` on first use. */
  constructor(private readonly device = '/dev/xen/gntalloc') {}

  share(domid: number, count: number, writable: boolean): SharedPages {
    checkBatch('share', domid, count);
    const fd = this.open();
    const arg = encodeAllocGref(domid, writable ? GNTALLOC_FLAG_WRITABLE : 0, count);
    let index: number;
    try {
      ioctl(fd, IOCTL_GNTALLOC_ALLOC_GREF, arg, 'IOCTL_GNTALLOC_ALLOC_GREF');
      index = decodeIndex(arg);
    } catch (e) {
      throw asGnttab(e, 'share', domid);
    }
    const refs = decodeGrefIds(arg, count);
    let mapping: Mapping;
    try {
      // The pages are ours: always mapped read-write (gntalloc requires a shared writable map).
      mapping = Mapping.file(fd, index, count * PAGE_SIZE, true, 'gntalloc pages');
    } catch (e) {
      try { ioctl(fd, IOCTL_GNTALLOC_DEALLOC_GREF, encodeDeallocGref(index, count), 'IOCTL_GNTALLOC_DEALLOC_GREF'); } catch { /* reported below */ }
      throw asGnttab(e, 'share', domid, refs[0]);
    }
    const p = new LinuxSharedPages(domid, Object.freeze(refs), mapping.view(), writable, index, mapping, this);
    this.live.add(p);
    return p;
  }

  endAccess(pages: SharedPages): void {
    if (!(pages instanceof LinuxSharedPages) || pages.owner !== this || !this.live.has(pages)) {
      throw new GnttabError('EINVAL', 'endAccess', pages.domid, pages.refs[0], 'pages not shared by this sharer, or already ended');
    }
    try {
      ioctl(this.fd, IOCTL_GNTALLOC_DEALLOC_GREF, encodeDeallocGref(pages.index, pages.refs.length), 'IOCTL_GNTALLOC_DEALLOC_GREF');
    } catch (e) {
      throw asGnttab(e, 'endAccess', pages.domid, pages.refs[0]);
    }
    this.live.delete(pages);
    pages.mapping.unmap();
  }

  close(): void {
    for (const p of [...this.live]) {
      try { this.endAccess(p); } catch { p.mapping.unmap(); }
    }
    this.live.clear();
    if (this.fd >= 0) libc.close(this.fd);
    this.fd = -1;
  }

  private open(): number {
    if (this.fd < 0) this.fd = openDevice(this.device, 'share');
    return this.fd;
  }
}

class LinuxMappedGrants implements MappedGrants {
  constructor(
    readonly domid: number,
    readonly refs: readonly number[],
    readonly buffer: Buffer,
    readonly writable: boolean,
    readonly index: number,
    readonly mapping: Mapping,
    readonly owner: LinuxGrantMapper,
  ) {}
}

/** Mapping through /dev/xen/gntdev (a backend in dom0 or a driver domain). */
export class LinuxGrantMapper implements GrantMapper {
  private fd = -1;
  private readonly live = new Set<LinuxMappedGrants>();
  /** The grant copy ioctl's argument and segment array, reused by every copy (copies are synchronous). */
  private readonly copyArg = Buffer.alloc(GNTDEV_SIZES.grant_copy);
  private readonly copyArgView = new DataView(this.copyArg.buffer, this.copyArg.byteOffset, this.copyArg.byteLength);
  private copySegs = Buffer.alloc(0);
  private copySegsView = new DataView(new ArrayBuffer(0));

  /** `new LinuxGrantMapper(device)` opens `device` on first use. */
  constructor(private readonly device = '/dev/xen/gntdev') {}

  map(domid: number, refs: readonly number[], writable: boolean): MappedGrants {
    checkBatch('map', domid, Array.isArray(refs) ? refs.length : 0);
    for (const r of refs) if (!Number.isInteger(r) || r < 0 || r > 0xffffffff) throw new GnttabError('EINVAL', 'map', domid, Number(r), 'not a grant reference');
    const fd = this.open();
    const arg = encodeMapGrantRef(domid, refs);
    let index: number;
    try {
      ioctl(fd, IOCTL_GNTDEV_MAP_GRANT_REF, arg, 'IOCTL_GNTDEV_MAP_GRANT_REF');
      index = decodeIndex(arg);
    } catch (e) {
      throw asGnttab(e, 'map', domid, refs[0]);
    }
    let mapping: Mapping;
    try {
      // gntdev.c: the hypercall happens here, read-only when the mapping has no PROT_WRITE.
      mapping = Mapping.file(fd, index, refs.length * PAGE_SIZE, writable, `grants of d${domid}`);
    } catch (e) {
      try { ioctl(fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, encodeUnmapGrantRef(index, refs.length), 'IOCTL_GNTDEV_UNMAP_GRANT_REF'); } catch { /* reported below */ }
      throw asGnttab(e, 'map', domid, refs[0]);
    }
    const m = new LinuxMappedGrants(domid, Object.freeze([...refs]), mapping.view(), writable, index, mapping, this);
    this.live.add(m);
    return m;
  }

  unmap(m: MappedGrants): void {
    const lm = this.own(m, 'unmap');
    this.live.delete(lm);
    // gntdev.h: munmap() before IOCTL_GNTDEV_UNMAP_GRANT_REF.
    lm.mapping.unmap();
    try {
      ioctl(this.fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, encodeUnmapGrantRef(lm.index, lm.refs.length), 'IOCTL_GNTDEV_UNMAP_GRANT_REF');
    } catch (e) {
      throw asGnttab(e, 'unmap', m.domid, m.refs[0]);
    }
  }

  copy(domid: number, batch: GrantCopyBatch, local: Uint8Array, toForeign: boolean): void {
    if (!isDomid(domid)) throw new GnttabError('EINVAL', 'copy', Number(domid), undefined, 'not a domid');
    checkCopy(domid, batch, local);
    const fd = this.open();
    const n = batch.count;
    const SEG = GNTDEV_SIZES.grant_copy_segment;
    if (this.copySegs.byteLength < n * SEG) {
      // Grown to the largest batch seen; off-heap (Buffer.alloc of this size), so the address
      // handed to the kernel stays put.
      this.copySegs = Buffer.alloc(Math.max(n, 64) * SEG);
      this.copySegsView = new DataView(this.copySegs.buffer, this.copySegs.byteOffset, this.copySegs.byteLength);
    }
    const v = this.copySegsView;
    const base = bytesAddress(local);
    // gntdev.c gntdev_grant_copy_seg: the local side may cross pages (the kernel splits it); the
    // grant side may not (GNTST_bad_copy_arg), which GrantCopyBatch.add already refused.
    for (let i = 0; i < n; i++) {
      encodeGrantCopySegment(v, i, base + batch.localOffsets[i]!, domid, batch.refs[i]!, batch.offsets[i]!, batch.lengths[i]!, toForeign);
    }
    encodeGrantCopy(this.copyArgView, bytesAddress(this.copySegs), n);
    try {
      ioctl(fd, IOCTL_GNTDEV_GRANT_COPY, this.copyArg, 'IOCTL_GNTDEV_GRANT_COPY');
    } catch (e) {
      throw asGnttab(e, 'copy', domid, batch.refs[0]);
    }
    // The ioctl succeeds when every segment was tried; each says how it went.
    for (let i = 0; i < n; i++) {
      const st = grantCopyStatus(v, i);
      if (st !== 0) {
        throw new GnttabError(gntstErrno(st), 'copy', domid, batch.refs[i], `${GNTST_NAMES[st] ?? `status ${st}`} copying ${toForeign ? 'into' : 'out of'} the grant`);
      }
    }
  }

  setUnmapNotify(m: MappedGrants, notify: UnmapNotify): void {
    const lm = this.own(m, 'setUnmapNotify');
    let action = 0;
    let offset = 0;
    if (notify.clearByte !== undefined) {
      offset = notify.clearByte;
      if (!Number.isInteger(offset) || offset < 0 || offset >= lm.refs.length * PAGE_SIZE) {
        throw new GnttabError('EINVAL', 'setUnmapNotify', m.domid, m.refs[0], `clearByte ${offset} outside the mapping`);
      }
      action |= UNMAP_NOTIFY_CLEAR_BYTE;
    }
    if (notify.port !== undefined) action |= UNMAP_NOTIFY_SEND_EVENT;
    try {
      ioctl(this.fd, IOCTL_GNTDEV_SET_UNMAP_NOTIFY, encodeUnmapNotify(lm.index + offset, action, notify.port ?? 0), 'IOCTL_GNTDEV_SET_UNMAP_NOTIFY');
    } catch (e) {
      throw asGnttab(e, 'setUnmapNotify', m.domid, m.refs[0]);
    }
  }

  close(): void {
    for (const m of [...this.live]) {
      try { this.unmap(m); } catch { /* closing the fd releases the rest */ }
    }
    if (this.fd >= 0) libc.close(this.fd);
    this.fd = -1;
  }

  private own(m: MappedGrants, op: GnttabOp): LinuxMappedGrants {
    if (!(m instanceof LinuxMappedGrants) || m.owner !== this || !this.live.has(m)) {
      throw new GnttabError('EINVAL', op, m.domid, m.refs[0], 'not mapped by this mapper');
    }
    return m;
  }

  private open(): number {
    if (this.fd < 0) this.fd = openDevice(this.device, 'map');
    return this.fd;
  }
}
