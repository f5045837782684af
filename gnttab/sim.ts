// Grant tables on the simulated Xen host.
//
// Each simulated domain has a "RAM" file (its page frames) and a grant table file holding
// grant_entry_v1 entries in the real layout (grant-entry.ts). As on Xen, the granting guest
// writes its own table: `share` picks free refs and frames, zeroes the pages and fills
// domid/frame before publishing the flags; `endAccess` clears an entry with a compare-and-swap
// that fails while GTF_reading/GTF_writing are set (gnttab_end_foreign_access_ref_v1's rule).
// Refs and frames come from chunks the daemon assigns to this process, so several processes of
// one domain never hand out the same ref or frame, and the daemon can revoke everything a dead
// process granted.
//
// Mapping is a hypercall to the daemon, which plays the hypervisor: it checks the entry
// (GTF_permit_access, the grantee domid, GTF_readonly against a writable request, the ref within
// the table) and sets GTF_reading/GTF_writing with a cmpxchg on the flags+domid word, keeping pin
// counts in its own private table (Xen's active grant entries) so several mappings coexist. It
// answers with the frames; we then mmap the grantor's RAM file pages MAP_SHARED into one
// contiguous reservation. Unmapping detaches the Buffer, guards and releases the address range
// (native/memory.ts) and asks the daemon to unpin, which clears the flags when the last pin goes.
//
// A grant copy (GNTTABOP_copy) is the same check and pin for the time of the copy: the daemon
// pins the grants (GTF_writing for a copy into them), we read or write those frames of the
// grantor's RAM file with pread/pwrite, and the daemon unpins. Nothing is mapped, and a grant
// the grantor ended cannot be copied: the pin refuses it, as Xen's copy does. One difference:
// the pins are taken for the whole batch first, so a refused piece means nothing was copied,
// where Xen carries out each piece on its own (GNTTABOP_copy's per-op status) and the pieces
// before a refused one have been copied; callers must not rely on either.
import fs from 'node:fs';
import type { GrantMapper, GrantSharer, MappedGrants, SharedPages, UnmapNotify } from './gnttab.ts';
import { PAGE_SIZE } from './gnttab.ts';
import { GnttabError } from './error.ts';
import { GNTTAB_NR_RESERVED_ENTRIES, GTF, domidAt, flagsAt, frameAt, isDomid } from './grant-entry.ts';
import { Mapping } from '../native/memory.ts';
import type { GrantCopyBatch } from './copy-batch.ts';
import { checkCopy } from './copy-batch.ts';

/** gntdev.h UNMAP_NOTIFY_* actions, also the simulator's. */
export const UNMAP_NOTIFY_CLEAR_BYTE = 1;
export const UNMAP_NOTIFY_SEND_EVENT = 2;

/** Refs and frames are assigned to processes in chunks of this many. */
export const SIM_CHUNK = 64;

/** Most pages one share or map call may cover. */
export const SIM_MAX_BATCH = 4096;

/** The daemon's answer to a map hypercall. */
export interface SimMapResult {
  readonly handle: number;
  /** Grantor's instance number, naming its RAM file. */
  readonly instance: number;
  readonly frames: readonly number[];
}

/** The daemon calls the simulated grant table makes; each throws GnttabError when refused. */
export interface SimGnttabHypervisor {
  /** A fresh chunk of SIM_CHUNK grant refs for this process: its first ref. */
  grantChunk(): number;
  /** `count` (a multiple of SIM_CHUNK) fresh contiguous frames for this process: the first one. */
  frameRun(count: number): number;
  map(domid: number, refs: readonly number[], writable: boolean): SimMapResult;
  unmap(handle: number): void;
  setUnmapNotify(handle: number, action: number, offset: number, port: number): void;
}

/** What an attached process hands the simulated grant table. */
export interface SimGnttabConfig {
  readonly domid: number;
  readonly nrGrants: number;
  readonly nrFrames: number;
  /** This domain's grant table, mapped writable by the caller. */
  readonly grantTable: Uint8Array;
  /** This domain's whole RAM, mapped by the caller. */
  readonly ram: Mapping;
  /** The RAM file of a domain instance. */
  ramPath(domid: number, instance: number): string;
  readonly hypervisor: SimGnttabHypervisor;
}

class SimSharedPages implements SharedPages {
  ended = false;
  constructor(
    readonly domid: number,
    readonly refs: readonly number[],
    readonly buffer: Buffer,
    readonly writable: boolean,
    readonly firstFrame: number,
    readonly owner: SimGrantSharer,
  ) {}
}

function checkCount(op: 'share' | 'map', domid: number, count: number): void {
  if (!Number.isInteger(count) || count < 1 || count > SIM_MAX_BATCH) {
    throw new GnttabError('EINVAL', op, domid, undefined, `page count ${count} outside 1..${SIM_MAX_BATCH}`);
  }
}

/** Sharing side: grants pages of this domain's RAM. */
export class SimGrantSharer implements GrantSharer {
  private readonly flags: Uint16Array;
  private readonly words: Uint32Array;
  private readonly freeRefs: number[] = [];
  /** 1 where a frame is assigned to this process and not in use. */
  private readonly frameFree: Uint8Array;
  /** Frame ranges [start, end) the daemon assigned to this process. */
  private readonly runs: [number, number][] = [];
  private readonly live = new Set<SimSharedPages>();
  private closed = false;

  /** `new SimGrantSharer(cfg)` shares from the tables and RAM in `cfg`. */
  constructor(private readonly cfg: SimGnttabConfig) {
    const t = cfg.grantTable;
    this.flags = new Uint16Array(t.buffer, t.byteOffset, t.byteLength / 2);
    this.words = new Uint32Array(t.buffer, t.byteOffset, t.byteLength / 4);
    this.frameFree = new Uint8Array(cfg.nrFrames);
  }

  share(domid: number, count: number, writable: boolean): SharedPages {
    if (this.closed) throw new GnttabError('EINVAL', 'share', domid, undefined, 'sharer closed');
    if (!isDomid(domid)) throw new GnttabError('EINVAL', 'share', Number(domid), undefined, 'not a domid');
    checkCount('share', domid, count);
    const first = this.takeFrames(count, domid);
    const refs: number[] = [];
    try {
      for (let i = 0; i < count; i++) refs.push(this.takeRef(domid));
    } catch (e) {
      this.freeRefs.push(...refs);
      this.frameFree.fill(1, first, first + count);
      throw e;
    }
    const buffer = this.cfg.ram.view(first * PAGE_SIZE, count * PAGE_SIZE);
    buffer.fill(0);
    const fl = GTF.permit_access | (writable ? 0 : GTF.readonly);
    for (let i = 0; i < count; i++) {
      const ref = refs[i]!;
      // grant_table.h: fill domid and frame, then publish flags (Linux puts a wmb() between).
      Atomics.store(this.flags, domidAt(ref), domid);
      Atomics.store(this.words, frameAt(ref), first + i);
      Atomics.store(this.flags, flagsAt(ref), fl);
    }
    const pages = new SimSharedPages(domid, Object.freeze(refs), buffer, writable, first, this);
    this.live.add(pages);
    return pages;
  }

  endAccess(pages: SharedPages): void {
    if (!(pages instanceof SimSharedPages) || pages.owner !== this) {
      throw new GnttabError('EINVAL', 'endAccess', pages.domid, pages.refs[0], 'pages were not shared by this sharer');
    }
    if (pages.ended) throw new GnttabError('EINVAL', 'endAccess', pages.domid, pages.refs[0], 'access already ended');
    const { refs } = pages;
    // Refuse before touching anything if a ref is visibly mapped...
    for (const ref of refs) {
      if ((Atomics.load(this.flags, flagsAt(ref)) & (GTF.reading | GTF.writing)) !== 0) {
        throw new GnttabError('EBUSY', 'endAccess', pages.domid, ref, 'still mapped by the grantee');
      }
    }
    // ...then revoke each with a cmpxchg that fails if a mapping raced in, undoing on failure.
    const saved: number[] = [];
    for (let i = 0; i < refs.length; i++) {
      const ref = refs[i]!;
      const at = flagsAt(ref);
      for (;;) {
        const f = Atomics.load(this.flags, at);
        if ((f & (GTF.reading | GTF.writing)) !== 0) {
          for (let j = 0; j < i; j++) Atomics.store(this.flags, flagsAt(refs[j]!), saved[j]!);
          throw new GnttabError('EBUSY', 'endAccess', pages.domid, ref, 'still mapped by the grantee');
        }
        if (Atomics.compareExchange(this.flags, at, f, 0) === f) {
          saved.push(f);
          break;
        }
      }
    }
    pages.ended = true;
    this.live.delete(pages);
    this.cfg.ram.releaseView(pages.buffer);
    for (const ref of refs) {
      Atomics.store(this.flags, domidAt(ref), 0);
      Atomics.store(this.words, frameAt(ref), 0);
      this.freeRefs.push(ref);
    }
    this.frameFree.fill(1, pages.firstFrame, pages.firstFrame + refs.length);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of [...this.live]) {
      try {
        this.endAccess(p);
      } catch {
        // Still mapped by a peer: the daemon keeps those pages and refs until it unmaps.
        this.cfg.ram.releaseView(p.buffer);
      }
    }
    this.live.clear();
  }

  /** `grantedCount` is how many pages are currently shared through this sharer. */
  get grantedCount(): number {
    let n = 0;
    for (const p of this.live) n += p.refs.length;
    return n;
  }

  private takeRef(domid: number): number {
    let ref = this.freeRefs.pop();
    if (ref === undefined) {
      const base = this.cfg.hypervisor.grantChunk();
      for (let r = base + SIM_CHUNK - 1; r >= base; r--) {
        if (r >= GNTTAB_NR_RESERVED_ENTRIES && r < this.cfg.nrGrants) this.freeRefs.push(r);
      }
      ref = this.freeRefs.pop();
      if (ref === undefined) throw new GnttabError('ENOSPC', 'share', domid, undefined, 'no grant reference left');
    }
    return ref;
  }

  /** First frame of `count` contiguous free frames assigned to us, getting more from the daemon if needed. */
  private takeFrames(count: number, domid: number): number {
    const free = this.frameFree;
    for (const [start, end] of this.runs) {
      let run = 0;
      for (let f = start; f < end; f++) {
        if (free[f] === 1) {
          if (++run === count) {
            const first = f - count + 1;
            free.fill(0, first, f + 1);
            return first;
          }
        } else {
          run = 0;
        }
      }
    }
    const want = Math.ceil(count / SIM_CHUNK) * SIM_CHUNK;
    let first: number;
    try {
      first = this.cfg.hypervisor.frameRun(want);
    } catch (e) {
      if (e instanceof GnttabError) throw new GnttabError(e.code, 'share', domid, undefined, e.message);
      throw e;
    }
    this.addRun(first, first + want);
    free.fill(1, first + count, first + want);
    return first;
  }

  /** Record frames [start, end) as ours, merging with an adjacent run. */
  private addRun(start: number, end: number): void {
    for (const r of this.runs) {
      if (r[1] === start) { r[1] = end; return; }
      if (r[0] === end) { r[0] = start; return; }
    }
    this.runs.push([start, end]);
  }
}

class SimMappedGrants implements MappedGrants {
  constructor(
    readonly domid: number,
    readonly refs: readonly number[],
    readonly buffer: Buffer,
    readonly writable: boolean,
    readonly handle: number,
    readonly instance: number,
    readonly mapping: Mapping,
    readonly owner: SimGrantMapper,
  ) {}
}

interface RamFile {
  readonly fd: number;
  users: number;
}

/** Mapping side: maps other domains' grants into this process. */
export class SimGrantMapper implements GrantMapper {
  private readonly live = new Set<SimMappedGrants>();
  private readonly ramFiles = new Map<number, RamFile>();
  private closed = false;

  /** `new SimGrantMapper(cfg)` maps through the daemon in `cfg`. */
  constructor(private readonly cfg: SimGnttabConfig) {}

  map(domid: number, refs: readonly number[], writable: boolean): MappedGrants {
    if (this.closed) throw new GnttabError('EINVAL', 'map', domid, undefined, 'mapper closed');
    if (!isDomid(domid)) throw new GnttabError('EINVAL', 'map', Number(domid), undefined, 'not a domid');
    if (!Array.isArray(refs)) throw new GnttabError('EINVAL', 'map', domid, undefined, 'refs must be an array');
    checkCount('map', domid, refs.length);
    for (const r of refs) {
      if (!Number.isInteger(r) || r < 0 || r > 0xffffffff) throw new GnttabError('EINVAL', 'map', domid, Number(r), 'not a grant reference');
    }
    const res = this.cfg.hypervisor.map(domid, refs, writable);
    const count = refs.length;
    let mapping: Mapping | undefined;
    let ram: RamFile | undefined;
    try {
      ram = this.openRam(domid, res.instance);
      mapping = Mapping.reserve(count * PAGE_SIZE);
      // One mmap per run of consecutive frames.
      let i = 0;
      while (i < count) {
        let j = i + 1;
        while (j < count && res.frames[j] === res.frames[j - 1]! + 1) j++;
        mapping.place(i * PAGE_SIZE, ram.fd, res.frames[i]! * PAGE_SIZE, (j - i) * PAGE_SIZE, writable, `grant of d${domid}`);
        i = j;
      }
      const buffer = mapping.view();
      const m = new SimMappedGrants(domid, Object.freeze([...refs]), buffer, writable, res.handle, res.instance, mapping, this);
      this.live.add(m);
      return m;
    } catch (e) {
      mapping?.unmap();
      if (ram !== undefined) this.closeRam(res.instance);
      try { this.cfg.hypervisor.unmap(res.handle); } catch { /* reported below */ }
      if (e instanceof GnttabError) throw e;
      throw new GnttabError('EIO', 'map', domid, refs[0], (e as Error).message);
    }
  }

  copy(domid: number, batch: GrantCopyBatch, local: Uint8Array, toForeign: boolean): void {
    if (this.closed) throw new GnttabError('EINVAL', 'copy', domid, undefined, 'mapper closed');
    if (!isDomid(domid)) throw new GnttabError('EINVAL', 'copy', Number(domid), undefined, 'not a domid');
    checkCopy(domid, batch, local);
    const n = batch.count;
    const refs = new Array<number>(n);
    for (let i = 0; i < n; i++) refs[i] = batch.refs[i]!;
    let res: SimMapResult;
    try {
      res = this.cfg.hypervisor.map(domid, refs, toForeign);
    } catch (e) {
      if (e instanceof GnttabError) throw new GnttabError(e.code, 'copy', domid, e.ref, e.message);
      throw e;
    }
    let ram: RamFile | undefined;
    try {
      ram = this.openRam(domid, res.instance, 'copy');
      for (let i = 0; i < n; i++) {
        const len = batch.lengths[i]!;
        const at = res.frames[i]! * PAGE_SIZE + batch.offsets[i]!;
        const done = toForeign
          ? fs.writeSync(ram.fd, local, batch.localOffsets[i]!, len, at)
          : fs.readSync(ram.fd, local, batch.localOffsets[i]!, len, at);
        if (done !== len) throw new GnttabError('EIO', 'copy', domid, batch.refs[i], `${done} of ${len} bytes copied`);
      }
    } catch (e) {
      if (e instanceof GnttabError) throw e;
      throw new GnttabError('EIO', 'copy', domid, batch.refs[0], (e as Error).message);
    } finally {
      if (ram !== undefined) this.closeRam(res.instance);
      this.cfg.hypervisor.unmap(res.handle);
    }
  }

  unmap(m: MappedGrants): void {
    const sm = this.own(m, 'unmap');
    if (!this.live.delete(sm)) throw new GnttabError('EINVAL', 'unmap', m.domid, m.refs[0], 'already unmapped');
    // Pages first (so the grantor may reuse them as soon as the daemon unpins), then the pins.
    sm.mapping.unmap();
    this.closeRam(sm.instance);
    this.cfg.hypervisor.unmap(sm.handle);
  }

  setUnmapNotify(m: MappedGrants, notify: UnmapNotify): void {
    const sm = this.own(m, 'setUnmapNotify');
    if (!this.live.has(sm)) throw new GnttabError('EINVAL', 'setUnmapNotify', m.domid, m.refs[0], 'not mapped');
    let action = 0;
    let offset = 0;
    let port = 0;
    if (notify.clearByte !== undefined) {
      offset = notify.clearByte;
      if (!Number.isInteger(offset) || offset < 0 || offset >= sm.refs.length * PAGE_SIZE) {
        throw new GnttabError('EINVAL', 'setUnmapNotify', m.domid, m.refs[0], `clearByte ${offset} outside the mapping`);
      }
      if (!sm.writable) throw new GnttabError('EINVAL', 'setUnmapNotify', m.domid, m.refs[0], 'clearByte needs a writable mapping');
      action |= UNMAP_NOTIFY_CLEAR_BYTE;
    }
    if (notify.port !== undefined) {
      port = notify.port;
      if (!Number.isInteger(port) || port <= 0) throw new GnttabError('EINVAL', 'setUnmapNotify', m.domid, m.refs[0], `bad port ${port}`);
      action |= UNMAP_NOTIFY_SEND_EVENT;
    }
    this.cfg.hypervisor.setUnmapNotify(sm.handle, action, offset, port);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const m of [...this.live]) {
      try { this.unmap(m); } catch { /* the daemon unpins whatever is left when we detach */ }
    }
  }

  /** `mappedCount` is how many pages are currently mapped through this mapper. */
  get mappedCount(): number {
    let n = 0;
    for (const m of this.live) n += m.refs.length;
    return n;
  }

  private own(m: MappedGrants, op: 'unmap' | 'setUnmapNotify'): SimMappedGrants {
    if (!(m instanceof SimMappedGrants) || m.owner !== this) {
      throw new GnttabError('EINVAL', op, m.domid, m.refs[0], 'not mapped by this mapper');
    }
    return m;
  }

  private openRam(domid: number, instance: number, op: 'map' | 'copy' = 'map'): RamFile {
    let r = this.ramFiles.get(instance);
    if (r === undefined) {
      let fd: number;
      try {
        fd = fs.openSync(this.cfg.ramPath(domid, instance), 'r+');
      } catch (e) {
        throw new GnttabError('ESRCH', op, domid, undefined, `memory of d${domid} is gone: ${(e as Error).message}`);
      }
      r = { fd, users: 0 };
      this.ramFiles.set(instance, r);
    }
    r.users++;
    return r;
  }

  private closeRam(instance: number): void {
    const r = this.ramFiles.get(instance);
    if (r === undefined || --r.users > 0) return;
    this.ramFiles.delete(instance);
    fs.closeSync(r.fd);
  }
}
